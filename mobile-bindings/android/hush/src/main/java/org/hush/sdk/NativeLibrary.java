package org.hush.sdk;

/**
 * Loads the JNI library once. On Android it is {@code libhush_jni.so} packed in the APK; on a
 * desktop JVM, put it on {@code java.library.path} or name the file with the system property
 * {@code org.hush.sdk.library}.
 */
final class NativeLibrary {
    static final String NAME = "hush_jni";
    static final String PATH_PROPERTY = "org.hush.sdk.library";

    private NativeLibrary() {
    }

    static synchronized void load() {
        String path = System.getProperty(PATH_PROPERTY);
        if (path != null && !path.isEmpty()) {
            System.load(path);
        } else {
            System.loadLibrary(NAME);
        }
    }
}
