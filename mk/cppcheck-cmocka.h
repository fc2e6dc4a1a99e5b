/* Read by cppcheck only (make check): cmocka's assertions as what they mean - stop the test when
 * the condition fails - so the analysis knows that code after assert_true(i >= 0) has i >= 0.
 * cmocka.h itself is a system header that cppcheck does not parse. */
void abort(void);
#define assert_true(c) do { if (!(c)) abort(); } while (0)
#define assert_false(c) do { if (c) abort(); } while (0)
#define assert_non_null(p) do { if (!(p)) abort(); } while (0)
#define assert_null(p) do { if (p) abort(); } while (0)
#define assert_int_equal(a, b) do { if ((a) != (b)) abort(); } while (0)
#define assert_int_not_equal(a, b) do { if ((a) == (b)) abort(); } while (0)
#define fail_msg(...) abort()
