import Foundation
import Hush
import XCTest

/// The Swift API against the real hushd on loopback: real databases, real WebSocket traffic.
final class HushClientTests: XCTestCase {
    var relay: TestRelay!
    var clients: [HushClient] = []
    var dir: URL!

    override func setUpWithError() throws {
        relay = try TestRelay()
        dir = relay.dir.appendingPathComponent("clients")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        for c in clients {
            c.close()
        }
        clients = []
        XCTAssertEqual(relay.stop(), 0, "hushd stops cleanly")
    }

    func path(_ name: String) -> String { dir.appendingPathComponent(name + ".db").path }

    func open(_ name: String, _ r: Recorder?) throws -> HushClient {
        let c = try HushClient(databasePath: path(name), databaseKey: testKey(name), durability: .normal)
        c.delegate = r
        clients.append(c)
        return c
    }

    func online(_ name: String, _ r: Recorder?) async throws -> HushClient {
        let c = try open(name, r)
        if try !c.hasDevice {
            try c.createDevice(username: name, deviceID: 1)
        }
        try c.start(relayURL: relay.url)
        try await c.waitOnline(timeout: 15)
        return c
    }

    func closeClient(_ c: HushClient) {
        c.close()
        clients.removeAll { $0 === c }
    }

    // MARK: -

    func testSendReceiveReceiptsAndHistory() async throws {
        let ra = Recorder(), rb = Recorder()
        let alice = try await online("alice", ra)
        let bob = try await online("bob", rb)
        XCTAssertEqual(try alice.username, "alice")
        XCTAssertEqual(try alice.deviceID, 1)
        XCTAssertEqual(try alice.connectionState, .online)
        XCTAssertNil(try alice.lastError)

        let text = "héllo ☃ 😀 \u{0} end" // non-ASCII, a character outside the BMP, and a NUL
        let id = try await alice.send(text, to: "bob")
        XCTAssertTrue(rb.await { $0.messages.count == 1 }, "bob receives")
        let m = rb.messages[0]
        XCTAssertEqual(m.text, text)
        XCTAssertEqual(m.body, Data(text.utf8))
        XCTAssertEqual(m.sender, "alice")
        XCTAssertEqual(m.senderDevice, 1)
        XCTAssertEqual(m.id, id)
        XCTAssertEqual(m.kind, .text)
        XCTAssertNil(m.groupID)
        XCTAssertGreaterThan(m.localID, 0)
        XCTAssertLessThan(abs(m.sentAt.timeIntervalSinceNow), 60)
        XCTAssertEqual(rb.threadNames, ["hush-network"], "the delegate runs on libhush's network thread")
        XCTAssertFalse(rb.onMainThread)

        XCTAssertTrue(ra.await { $0.hasReceipt(id, .sent) }, "SENT")
        XCTAssertTrue(ra.await { $0.hasReceipt(id, .delivered) }, "DELIVERED")
        try bob.markRead(localID: m.localID)
        XCTAssertTrue(ra.await { $0.hasReceipt(id, .read) }, "READ")
        XCTAssertEqual(try alice.state(of: id), .read)
        XCTAssertEqual(ra.receipts.filter { $0.id == id }.map(\.state), [.sent, .delivered, .read])

        let ha = try alice.history(with: "bob", limit: 10)
        XCTAssertEqual(ha.count, 1)
        XCTAssertTrue(ha[0].isOutgoing)
        XCTAssertEqual(ha[0].text, text)
        XCTAssertEqual(ha[0].id, id)
        XCTAssertEqual(ha[0].peer, "bob")
        let hb = try bob.history(with: "alice", limit: 10)
        XCTAssertEqual(hb.count, 1)
        XCTAssertFalse(hb[0].isOutgoing)
        XCTAssertTrue(hb[0].isRead)
        XCTAssertEqual(hb[0].peerDevice, 1)
        XCTAssertEqual(hb[0].localID, m.localID)
        try bob.deleteMessage(localID: hb[0].localID)
        XCTAssertEqual(try bob.history(with: "alice").count, 0)
        XCTAssertEqual(try alice.devices(of: "bob"), [1])

        // and back, many times, in order; then page through the history
        for i in 0..<300 {
            try await bob.send("reply \(i)", to: "alice")
        }
        XCTAssertTrue(ra.await(60) { $0.messages.count == 300 })
        XCTAssertEqual(ra.messages.map(\.text), (0..<300).map { "reply \($0)" })
        var all: [HistoryEntry] = []
        var before: Int64 = 0
        while true {
            let page = try alice.history(with: "bob", before: before, limit: 128)
            if page.isEmpty { break }
            all += page
            before = page.last!.localID
        }
        XCTAssertEqual(all.count, 301)
        XCTAssertEqual(all.first?.text, "reply 299")
        XCTAssertEqual(all.last?.id, id)
        try alice.checkIntegrity()
    }

    func testOfflineDeliveryExactlyOnceAcrossReopen() async throws {
        let ra = Recorder()
        let carol = try await online("carol", ra)
        var dave = try await online("dave", Recorder()) // registers dave, then goes away
        closeClient(dave)

        let n = 200
        var ids: [MessageID] = []
        for i in 0..<n {
            ids.append(try await carol.send("offline \(i)", to: "dave"))
        }
        XCTAssertEqual(try carol.state(of: ids[0]) >= .queued, true)
        try await carol.flush(timeout: 30)
        XCTAssertEqual(try carol.pendingCount, 0)
        XCTAssertEqual(try carol.state(of: ids[n - 1]), .sent)

        let rb = Recorder()
        dave = try await online("dave", rb)
        XCTAssertTrue(rb.await(60) { $0.messages.count >= n })
        XCTAssertEqual(rb.messages.map(\.text), (0..<n).map { "offline \($0)" })
        XCTAssertEqual(rb.messages.map(\.id), ids)
        XCTAssertEqual(Set(rb.messages.map(\.localID)).count, n)
        closeClient(dave)

        // reopened: nothing is reported twice
        let rb2 = Recorder()
        dave = try await online("dave", rb2)
        try await carol.send("after reopen", to: "dave")
        XCTAssertTrue(rb2.await { $0.messages.count >= 1 })
        usleep(300_000)
        XCTAssertEqual(rb2.messageCount, 1)
        XCTAssertEqual(rb2.messages[0].text, "after reopen")
        XCTAssertEqual(rb.messageCount, n)
    }

    func testTypingAndPresence() async throws {
        let ra = Recorder(), rb = Recorder()
        let erin = try await online("erin", ra)
        let fred = try await online("fred", rb)
        try await erin.send("hi", to: "fred")
        XCTAssertTrue(rb.await { $0.messages.count == 1 })
        try erin.setTyping(true, to: "fred")
        XCTAssertTrue(rb.await(10) { !$0.typing.isEmpty })
        XCTAssertEqual(rb.typing[0], TypingUpdate(peer: "erin", deviceID: 1, isTyping: true))
        try erin.setTyping(false, to: "fred")
        XCTAssertTrue(rb.await(10) { $0.typing.count == 2 })
        XCTAssertFalse(rb.typing[1].isTyping)

        try fred.allowPresence(for: ["erin"])
        try erin.subscribePresence(to: ["fred"])
        XCTAssertTrue(ra.await(10) { !$0.presence.isEmpty })
        XCTAssertEqual(ra.presence[0].user, "fred")
        XCTAssertTrue(ra.presence[0].isOnline)
        let before = ra.presence.count
        try fred.stop()
        XCTAssertTrue(ra.await(10) { $0.presence.count > before })
        XCTAssertFalse(ra.presence.last!.isOnline)
        XCTAssertNotNil(ra.presence.last!.lastSeen)
        XCTAssertTrue(rb.states.contains(.stopped))
        XCTAssertEqual(try fred.connectionState, .stopped)
        try fred.stop() // harmless when stopped
        try erin.allowPresence(for: []) // an empty list is a list
    }

    func testRooms() async throws {
        let ra = Recorder(), rb = Recorder(), rc = Recorder()
        let gina = try await online("gina", ra)
        let hugo = try await online("hugo", rb)
        let ines = try await online("ines", rc)
        let id = try gina.createGroup(named: "équipe", members: ["hugo", "ines"])
        XCTAssertEqual(id.count, 32)
        XCTAssertTrue(rb.await { r in r.messages.contains { $0.kind == .groupChange && $0.groupID == id } })
        XCTAssertTrue(rc.await { r in r.messages.contains { $0.kind == .groupChange && $0.groupID == id } })
        let info = try hugo.groupInfo(id)
        XCTAssertEqual(info.name, "équipe")
        XCTAssertEqual(info.members, ["gina", "hugo", "ines"])
        XCTAssertEqual(info.admins, ["gina"])
        XCTAssertTrue(info.isMember)
        XCTAssertFalse(info.isAdmin)
        let mid = try await gina.sendToGroup("hello room", group: id)
        XCTAssertTrue(rb.await { r in r.messages.contains { $0.kind == .groupText && $0.groupID == id && $0.text == "hello room" } })
        XCTAssertTrue(rc.await { r in r.messages.contains { $0.kind == .groupText && $0.sender == "gina" } })
        XCTAssertTrue(ra.await { $0.hasReceipt(mid, .sent) })
        try hugo.setGroupTyping(true, in: id)
        XCTAssertTrue(ra.await { !$0.groupTyping.isEmpty })
        XCTAssertEqual(ra.groupTyping[0], GroupTypingUpdate(group: id, user: "hugo", deviceID: 1, isTyping: true))
        XCTAssertThrowsError(try hugo.addToGroup(id, users: ["jack"])) { XCTAssertEqual($0 as? HushError, .notAllowed) }
        let photo = FileManager.default.temporaryDirectory.appendingPathComponent("room-\(UUID().uuidString).jpg")
        let bytes = Data((0..<70000).map { UInt8(truncatingIfNeeded: $0 &* 31) })
        try bytes.write(to: photo)
        defer { try? FileManager.default.removeItem(at: photo) }
        let fid = try gina.sendFile(toGroup: id, url: photo, contentType: "image/jpeg")
        XCTAssertTrue(rb.await(20) { r in r.messages.contains { $0.kind == .file && $0.groupID == id && $0.id == fid } })
        XCTAssertFalse(try gina.groupInfo(id).sharesPresence)
        try gina.shareGroupPresence(true, in: id)
        XCTAssertTrue(try gina.groupInfo(id).sharesPresence)
        XCTAssertTrue(rb.await { r in r.presence.contains { $0.user == "gina" && $0.isOnline } })
        try gina.removeFromGroup(id, user: "ines")
        XCTAssertTrue(rc.await { r in r.messages.contains { $0.kind == .groupChange && $0.text.contains("removed ines") } })
        XCTAssertThrowsError(try ines.shareGroupPresence(true, in: id)) { XCTAssertEqual($0 as? HushError, .notAllowed) }
        XCTAssertFalse(try ines.groupInfo(id).isMember)
        do {
            _ = try await ines.sendToGroup("still here?", group: id)
            XCTFail("a removed member sent to the room")
        } catch {
            XCTAssertEqual(error as? HushError, .notAllowed)
        }
        try gina.renameGroup(id, to: "team")
        XCTAssertTrue(rb.await { r in r.messages.contains { $0.kind == .groupChange && $0.text.contains("renamed") } })
        XCTAssertEqual(try hugo.groups().first?.name, "team")
        let h = try hugo.groupHistory(id)
        XCTAssertEqual(h.filter { $0.isGroupChange }.count, 3)
        XCTAssertEqual(h.filter { !$0.isGroupChange && $0.text == "hello room" }.first?.peer, "gina")
        XCTAssertThrowsError(try gina.groupInfo(String(repeating: "0", count: 32))) {
            XCTAssertEqual($0 as? HushError, .notFound)
        }
    }

    func testSafetyNumbers() async throws {
        let ra = Recorder(), rb = Recorder()
        let gina = try await online("gina", ra)
        let hank = try await online("hank", rb)
        try await gina.send("hello", to: "hank")
        XCTAssertTrue(rb.await { $0.messages.count == 1 })
        let sa = try gina.safetyNumber(peer: "hank", deviceID: 1)
        let sb = try hank.safetyNumber(peer: "gina")
        XCTAssertEqual(sa.count, 60)
        XCTAssertTrue(sa.allSatisfy { $0.isASCII && $0.isNumber })
        XCTAssertEqual(sa, sb)
        let scanned = try hank.safetyScannable(peer: "gina")
        XCTAssertTrue(try gina.safetyMatches(peer: "hank", scanned: scanned))
        var wrong = scanned
        wrong[wrong.count - 1] ^= 1
        XCTAssertFalse(try gina.safetyMatches(peer: "hank", scanned: wrong))
        XCTAssertFalse(try gina.safetyMatches(peer: "hank", scanned: Data([1, 2, 3])))
        XCTAssertFalse(try gina.safetyMatches(peer: "hank", scanned: Data()))
        XCTAssertFalse(try gina.safetyMatches(peer: "hank", scanned: try gina.safetyScannable(peer: "hank")),
                       "a code is not its own mirror")
        expectError(.notFound) { try gina.safetyNumber(peer: "nobody") }
        XCTAssertNil(try gina.pendingIdentity(peer: "hank"))
    }

    func testIdentityChange() async throws {
        let ra = Recorder()
        let ivan = try await online("ivan", ra)
        var judy = try await online("judy", Recorder())
        try await judy.send("before", to: "ivan")
        XCTAssertTrue(ra.await { $0.messages.count == 1 })
        let before = try ivan.safetyNumber(peer: "judy")

        // judy reinstalls: a new database (new keys) under the same name and device; the relay
        // would refuse the name, so the relay's side of the reinstall is done by hand
        closeClient(judy)
        for suffix in ["", "-wal", "-shm"] {
            try? FileManager.default.removeItem(atPath: path("judy") + suffix)
        }
        relay.stop()
        try relay.sql("DELETE FROM one_time_prekeys WHERE username='judy'; DELETE FROM devices WHERE username='judy'; "
                      + "DELETE FROM users WHERE username='judy';")
        try relay.start()
        try await ivan.waitOnline(timeout: 20)
        judy = try await online("judy", Recorder())
        try await judy.send("new phone", to: "ivan")
        XCTAssertTrue(ra.await(20) { $0.identity.count == 1 })
        let c = ra.identity[0]
        XCTAssertEqual(c.peer, "judy")
        XCTAssertEqual(c.deviceID, 1)
        XCTAssertEqual(c.oldSafetyNumber, before)
        XCTAssertNotEqual(c.oldSafetyNumber, c.newSafetyNumber)
        XCTAssertEqual(ra.messageCount, 1, "held back until the user decides")
        XCTAssertEqual(try ivan.pendingIdentity(peer: "judy"), c)
        expectError(.safetyMismatch) { try ivan.acceptIdentity(peer: "judy", safetyNumber: c.oldSafetyNumber) }
        // the number the user compared, as people type it: in groups of five
        let grouped = stride(from: 0, to: 60, by: 5).map { i -> String in
            let s = c.newSafetyNumber
            return String(s[s.index(s.startIndex, offsetBy: i)..<s.index(s.startIndex, offsetBy: i + 5)])
        }.joined(separator: " ")
        try ivan.acceptIdentity(peer: "judy", safetyNumber: grouped)
        XCTAssertTrue(ra.await { $0.messages.count == 2 })
        XCTAssertEqual(ra.messages[1].text, "new phone")
        XCTAssertEqual(try ivan.safetyNumber(peer: "judy"), c.newSafetyNumber)
        expectError(.notFound) { try ivan.acceptIdentity(peer: "judy") }
        expectError(.notFound) { try ivan.rejectIdentity(peer: "judy") }
    }

    func testLinkedDeviceRemovalAndRecovery() async throws {
        let rp = Recorder(), rb = Recorder(), rl = Recorder()
        let phone = try await online("pia", rp)
        let recovery = try XCTUnwrap(try phone.recoveryCode())
        try phone.forgetRecoveryCode()
        XCTAssertNil(try phone.recoveryCode())
        let bob = try await online("rob", rb)

        // the laptop shows a code; the phone links it
        let laptop = try open("pia-laptop", rl)
        try laptop.setDeviceName("laptop")
        try laptop.startLink(relayURL: relay.url)
        XCTAssertTrue(rl.await { !$0.linkCodes.isEmpty })
        let code = rl.linkCodes[0]
        XCTAssertTrue(code.hasPrefix("hush-link-1:"))
        let dev = try await phone.linkDevice(code: code, timeout: 15)
        XCTAssertEqual(dev, 2)
        try await laptop.waitOnline(timeout: 15)
        XCTAssertEqual(try laptop.username, "pia")
        XCTAssertEqual(try laptop.deviceID, 2)

        // rob writes to both; the laptop answers and the phone sees it as sent elsewhere
        _ = try await bob.send("to both", to: "pia")
        XCTAssertTrue(rp.await { $0.messages.count == 1 })
        XCTAssertTrue(rl.await { $0.messages.count == 1 })
        _ = try await laptop.send("from the laptop", to: "rob")
        XCTAssertTrue(rb.await { $0.messages.count == 1 })
        XCTAssertTrue(rp.await { $0.messages.count == 2 })
        let copy = rp.messages[1]
        XCTAssertEqual(copy.kind, .sentElsewhere)
        XCTAssertEqual(copy.sender, "pia")
        XCTAssertEqual(copy.senderDevice, 2)
        XCTAssertEqual(copy.conversation, "rob")
        XCTAssertEqual(copy.text, "from the laptop")
        XCTAssertEqual(try bob.safetyNumber(peer: "pia", deviceID: 1), try bob.safetyNumber(peer: "pia", deviceID: 2))
        let devs = try await phone.devices(timeout: 15)
        XCTAssertEqual(devs.map(\.deviceID), [1, 2])
        XCTAssertTrue(devs[0].isThisDevice)
        XCTAssertEqual(devs[1].name, "laptop")
        XCTAssertTrue(devs[1].isOnline)

        // the phone removes the laptop; the last device stays
        try await phone.removeDevice(2, timeout: 15)
        XCTAssertTrue(rl.await { $0.errors.contains(.deviceRemoved) })
        do {
            try await phone.removeDevice(1, timeout: 15)
            XCTFail("the last device")
        } catch let e as HushError {
            XCTAssertEqual(e, .invalidArgument)
        }

        // every device lost: the code gives a new one, and the phone is removed
        closeClient(laptop)
        let fresh = try open("pia-new", Recorder())
        try fresh.startRecover(username: "pia", recoveryCode: recovery, relayURL: relay.url)
        try await fresh.waitOnline(timeout: 15)
        XCTAssertEqual(try fresh.username, "pia")
        XCTAssertGreaterThan(try fresh.deviceID, 2)
        let again = try XCTUnwrap(try fresh.recoveryCode())
        XCTAssertNotEqual(again, recovery)
        XCTAssertTrue(rp.await { $0.errors.contains(.deviceRemoved) })
    }

    /// A wake-up through a real HTTP push service on loopback (the tests' receiver script): one
    /// for a burst to a sleeping device, then `wake` takes the mail and stops.
    func testSendAndReceiveFile() async throws {
        let ra = Recorder(), rb = Recorder()
        let alice = try await online("falice", ra)
        let bob = try await online("fbob", rb)
        var content = Data(count: 2 * 1024 * 1024 + 5)
        for i in 0..<content.count { content[i] = UInt8(truncatingIfNeeded: i &* 2654435761 >> 13) }
        let src = dir.appendingPathComponent("voice.ogg")
        try content.write(to: src)
        let id = try alice.sendFile(to: "fbob", url: src, contentType: "audio/ogg", thumbnail: Data([1, 2, 3]))
        XCTAssertTrue(ra.await(30) { r in r.files.contains { $0.id == id && $0.state == .sent } }, "uploaded")
        XCTAssertTrue(rb.await(20) { r in r.messages.contains { $0.kind == .file && $0.id == id } }, "the file message")
        let m = rb.messages.first { $0.id == id }!
        XCTAssertEqual(m.text, "voice.ogg")
        let a = try bob.attachment(id)
        XCTAssertEqual(a.fileName, "voice.ogg")
        XCTAssertEqual(a.contentType, "audio/ogg")
        XCTAssertEqual(a.size, UInt64(content.count))
        XCTAssertEqual(a.state, .remote)
        XCTAssertEqual(a.thumbnail, Data([1, 2, 3]))
        XCTAssertFalse(a.isOutgoing)
        let out = dir.appendingPathComponent("got.ogg")
        expectError(.notFound) { try bob.saveAttachment(id, to: out) }
        try bob.downloadAttachment(id)
        XCTAssertTrue(rb.await(30) { r in r.files.contains { $0.id == id && $0.state == .ready } }, "downloaded")
        XCTAssertTrue(rb.files.contains { $0.id == id && $0.state == .downloading }, "progress was reported")
        try bob.saveAttachment(id, to: out)
        XCTAssertEqual(try Data(contentsOf: out), content)
        let h = try bob.history(with: "falice")
        XCTAssertEqual(h.count, 1)
        XCTAssertTrue(h[0].isFile)
        XCTAssertEqual(try alice.attachment(id).state, .sent)
        expectError(.invalidArgument) { try alice.sendFile(to: "fbob", url: self.dir.appendingPathComponent("missing")) }
        expectError(.notFound) { try bob.attachment(MessageID(bytes: Data(count: 16))!) }
    }

    func testPushWakeUp() async throws {
        let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../../../../tests/fixtures/push_receiver.py").standardized
        let log = relay.dir.appendingPathComponent("push.log")
        let portFile = relay.dir.appendingPathComponent("push.port")
        let receiver = Process()
        receiver.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        receiver.arguments = ["python3", fixtures.path, log.path, portFile.path]
        // not the test runner's output: it must not stay open after the test
        receiver.standardOutput = FileHandle.nullDevice
        receiver.standardError = FileHandle.nullDevice
        try receiver.run()
        defer {
            receiver.terminate()
            receiver.waitUntilExit()
        }
        var port = 0
        for _ in 0..<200 where port == 0 {
            port = Int((try? String(contentsOf: portFile, encoding: .utf8)) ?? "") ?? 0
            if port == 0 {
                try await Task.sleep(nanoseconds: 50_000_000)
            }
        }
        XCTAssertNotEqual(port, 0, "the receiver serves")
        func posts() -> Int {
            ((try? String(contentsOf: log, encoding: .utf8)) ?? "").split(separator: "\n").count
        }

        let rb = Recorder()
        let bob = try await online("swiftbob", rb)
        expectError(.invalidArgument) { try bob.registerPush(endpoint: "http://x/y", p256dh: Data(count: 64), auth: Data(count: 16)) }
        // any point on P-256 will do here (this test does not decrypt): the generator G
        let g = Data([0x04,
            0x6b, 0x17, 0xd1, 0xf2, 0xe1, 0x2c, 0x42, 0x47, 0xf8, 0xbc, 0xe6, 0xe5, 0x63, 0xa4, 0x40, 0xf2,
            0x77, 0x03, 0x7d, 0x81, 0x2d, 0xeb, 0x33, 0xa0, 0xf4, 0xa1, 0x39, 0x45, 0xd8, 0x98, 0xc2, 0x96,
            0x4f, 0xe3, 0x42, 0xe2, 0xfe, 0x1a, 0x7f, 0x9b, 0x8e, 0xe7, 0xeb, 0x4a, 0x7c, 0x0f, 0x9e, 0x16,
            0x2b, 0xce, 0x33, 0x57, 0x6b, 0x31, 0x5e, 0xce, 0xcb, 0xb6, 0x40, 0x68, 0x37, 0xbf, 0x51, 0xf5])
        try bob.registerPush(endpoint: "http://127.0.0.1:\(port)/ok/swiftbob", p256dh: g, auth: Data(repeating: 7, count: 16))
        var rows = 0
        for _ in 0..<200 where rows != 1 {
            rows = try relay.count("SELECT count(*) FROM push_endpoints WHERE username = 'swiftbob'")
            if rows != 1 {
                try await Task.sleep(nanoseconds: 50_000_000)
            }
        }
        XCTAssertEqual(rows, 1, "the relay has the endpoint")
        let vapid = try bob.pushVapidKey
        XCTAssertEqual(vapid?.count, 87)
        try bob.stop()

        let alice = try await online("swiftalice", nil)
        for i in 0..<3 {
            _ = try await alice.send("wake up \(i)", to: "swiftbob")
        }
        try await alice.flush(timeout: 15)
        for _ in 0..<200 where posts() == 0 {
            try await Task.sleep(nanoseconds: 50_000_000)
        }
        try await Task.sleep(nanoseconds: 1_200_000_000)
        XCTAssertEqual(posts(), 1, "one wake-up for the burst")
        // the key the app gives a push service is the one that signs the wake-ups
        let line = ((try? String(contentsOf: log, encoding: .utf8)) ?? "").split(separator: "\n").first ?? ""
        let fields = line.split(separator: "\t", omittingEmptySubsequences: false)
        XCTAssertEqual(fields.count, 9)
        if fields.count == 9, let vapid = vapid {
            XCTAssertTrue(fields[7].hasSuffix(", k=" + vapid), String(fields[7]))
        }

        try await bob.wake(relayURL: relay.url, timeout: 15)
        XCTAssertTrue(rb.await { $0.messages.count == 3 })
        XCTAssertEqual(try bob.connectionState, .stopped)
        try bob.unregisterPush()
    }

    func testErrorMapping() async throws {
        XCTAssertEqual(HushError.libraryErrors.count, 37)
        XCTAssertEqual(HushError.pushGone.code, 35)
        XCTAssertEqual(HushError.groupConflict.code, 37)
        for (i, e) in HushError.libraryErrors.enumerated() {
            XCTAssertEqual(e.code, Int32(i + 1))
            XCTAssertEqual(HushError(code: e.code), e)
            XCTAssertFalse(e.description.isEmpty)
            XCTAssertFalse(e.description.hasPrefix("unknown"), e.description)
        }
        XCTAssertNil(HushError(code: 0))
        XCTAssertEqual(HushError(code: 9999), .unknown(9999))
        XCTAssertEqual(HushError.databaseKey.code, 6)
        XCTAssertEqual(HushError.sessionReplaced.code, 30)
        XCTAssertFalse(HushClient.version.isEmpty)

        let r = Recorder()
        let kim = try open("kim", r)
        XCTAssertFalse(try kim.hasDevice)
        expectError(.noDevice) { try kim.username }
        expectError(.noDevice) { try kim.start(relayURL: relay.url) }
        expectError(.invalidArgument) { try kim.createDevice(username: "Not Valid!") }
        expectError(.invalidArgument) { try kim.createDevice(username: "kim\u{0}x") }
        expectError(.invalidArgument) { try kim.createDevice(username: "kim", deviceID: 0) }
        expectError(.tooBig) { try kim.createDevice(username: String(repeating: "k", count: 5000)) }
        try kim.createDevice(username: "kim")
        expectError(.deviceExists) { try kim.createDevice(username: "kim") }
        await expectError(.notRunning) { try await kim.waitOnline(timeout: 0.01) }
        await expectError(.invalidArgument) { try await kim.send("x", to: "bad\u{0}name") }
        await expectError(.invalidArgument) { try await kim.send("x", to: "kim") } // oneself
        await expectError(.tooBig) { try await kim.send(String(repeating: "a", count: HushClient.maxBodyBytes + 1), to: "someone") }
        expectError(.invalidArgument) { try kim.history(with: "someone", limit: 0) }
        expectError(.invalidArgument) { try kim.history(with: "someone", limit: 501) }
        expectError(.invalidArgument) { try kim.allowPresence(for: ["ok", "bad\u{0}"]) }
        expectError(.notFound) { try kim.deleteMessage(localID: 123456) }
        expectError(.invalidArgument) { try kim.start(relayURL: "http://example.org") }
        try kim.start(relayURL: relay.url)
        expectError(.invalidArgument) { try kim.start(relayURL: relay.url) } // already running
        try await kim.waitOnline(timeout: 15)

        // a message to a user the relay does not know fails (state FAILED), reported as a receipt
        let id = try await kim.send("hello?", to: "nosuchuser")
        XCTAssertTrue(r.await { $0.hasReceipt(id, .failed) })
        XCTAssertEqual(try kim.state(of: id), .failed)
        expectError(.notFound) { try kim.cancel(id) }

        // a queued message can be cancelled
        try kim.stop()
        let queued = try await kim.send("never mind", to: "someone")
        XCTAssertEqual(try kim.state(of: queued), .queued)
        XCTAssertEqual(try kim.pendingCount, 1)
        try kim.cancel(queued)
        XCTAssertEqual(try kim.state(of: queued), .failed)
        XCTAssertEqual(try kim.pendingCount, 0)

        // wrong database key, short key, not a database
        closeClient(kim)
        expectError(.databaseKey) { try HushClient(databasePath: path("kim"), databaseKey: testKey(42)) }
        expectError(.invalidArgument) { try HushClient(databasePath: path("x"), databaseKey: Data(count: 16)) }
        let junk = path("junk")
        try Data("this is not a database at all".utf8).write(to: URL(fileURLWithPath: junk))
        expectError(.databaseCorrupt) { try HushClient(databasePath: junk, databaseKey: testKey(1)) }
        XCTAssertEqual(HushClient.makeDatabaseKey().count, 32)
        XCTAssertNotEqual(HushClient.makeDatabaseKey(), HushClient.makeDatabaseKey())
    }

    func testCloseSemantics() async throws {
        let r = Recorder()
        let lee = try await online("lee", r)
        lee.close()
        lee.close() // harmless
        XCTAssertTrue(lee.isClosed)
        await expectError(.closed) { try await lee.send("y", to: "xavier") }
        expectError(.closed) { try lee.username }
        expectError(.closed) { try lee.start() }
        expectError(.closed) { try lee.stop() }
        expectError(.closed) { try lee.history(with: "xavier") }
        expectError(.closed) { try lee.connectionState }
        await expectError(.closed) { try await lee.flush(timeout: 1) }
        XCTAssertTrue(r.states.contains(.stopped))

        // close from another thread while a task waits: the wait ends at once
        let offline = try HushClient(databasePath: path("mia"), databaseKey: testKey(3))
        clients.append(offline)
        try offline.createDevice(username: "mia")
        try offline.start(relayURL: "ws://127.0.0.1:1") // nothing listens there: stays offline
        try await offline.send("queued", to: "someone")
        let waiter = Task { () -> Error? in
            do {
                try await offline.flush(timeout: 60)
                return nil
            } catch {
                return error
            }
        }
        usleep(300_000)
        let t0 = Date()
        offline.close()
        let err = await waiter.value
        XCTAssertLessThan(Date().timeIntervalSince(t0), 10, "ended by close, not by its timeout")
        XCTAssertTrue([HushError.notRunning, .closed].contains(err as? HushError), String(describing: err))

        // stop() from the delegate is refused (it would wait for itself); close() from it finishes
        // on another thread once the callback returns
        final class Closer: Recorder, @unchecked Sendable {
            var stopError: Error?
            var closeReturned = false
            override func hushClient(_ client: HushClient, didReceive event: HushEvent) {
                super.hushClient(client, didReceive: event)
                if case .connection(.online, _) = event, !closeReturned {
                    do { try client.stop() } catch { stopError = error }
                    client.close()
                    cond.lock()
                    closeReturned = true
                    cond.broadcast()
                    cond.unlock()
                }
            }
        }
        let rc = Closer()
        let ned = try open("ned", rc)
        try ned.createDevice(username: "ned")
        try ned.start(relayURL: relay.url)
        XCTAssertTrue(rc.await { _ in rc.closeReturned })
        XCTAssertEqual(rc.stopError as? HushError, .insideCallback)
        XCTAssertTrue(ned.isClosed)
        expectError(.closed) { try ned.username }
        // the teardown finished: the database is closed and can be opened again
        var reopened: HushClient?
        for _ in 0..<100 where reopened == nil {
            reopened = try? HushClient(databasePath: path("ned"), databaseKey: testKey("ned"))
            if reopened == nil { usleep(20_000) }
        }
        XCTAssertEqual(try reopened?.username, "ned")
        reopened?.close()
    }

    func testDelegateAndClientAreReleased() async throws {
        weak var weakRecorder: Recorder?
        weak var weakClient: HushClient?
        do {
            let r = Recorder()
            let olga = try await online("olga", r)
            let id = try await olga.send("x", to: "nobody") // traffic through the callbacks
            XCTAssertTrue(r.await { $0.hasReceipt(id, .failed) })
            weakRecorder = r
            weakClient = olga
            clients.removeAll()
        }
        // an event being delivered at this instant holds both until its callback returns
        for _ in 0..<250 where weakClient != nil || weakRecorder != nil {
            usleep(20_000)
        }
        XCTAssertNil(weakClient, "the network thread holds no reference to the client")
        XCTAssertNil(weakRecorder, "the delegate is held weakly")
        // the last reference going away closed the database
        let again = try HushClient(databasePath: path("olga"), databaseKey: testKey("olga"))
        XCTAssertEqual(try again.username, "olga")
        again.close()
    }

    func testLastReferenceDroppedInsideACallback() async throws {
        // the delegate owns the client and lets it go from the network thread: deinit must not
        // join the thread it runs on
        final class Owner: Recorder, @unchecked Sendable {
            var client: HushClient?
            override func hushClient(_ client: HushClient, didReceive event: HushEvent) {
                super.hushClient(client, didReceive: event)
                if case .connection(.online, _) = event {
                    cond.lock()
                    self.client = nil
                    cond.unlock()
                }
            }
        }
        let owner = Owner()
        weak var weakClient: HushClient?
        do {
            let c = try HushClient(databasePath: path("pia"), databaseKey: testKey(5))
            try c.createDevice(username: "pia")
            c.delegate = owner
            owner.client = c
            weakClient = c
            try c.start(relayURL: relay.url)
        }
        XCTAssertTrue(owner.await { $0.states.contains(.online) })
        var reopened: HushClient?
        for _ in 0..<250 where reopened == nil {
            if weakClient == nil {
                reopened = try? HushClient(databasePath: path("pia"), databaseKey: testKey(5))
            }
            if reopened == nil { usleep(20_000) }
        }
        XCTAssertNil(weakClient)
        XCTAssertNotNil(reopened, "the client was torn down off the network thread")
        reopened?.close()
    }

    func testEventStream() async throws {
        let quin = try await online("quin", nil)
        let rita = try await online("rita", nil)
        let stream = rita.events
        XCTAssertTrue(true)
        let id = try await quin.send("through the stream", to: "rita")
        var got: Message?
        for await event in stream {
            if case .message(let m) = event {
                got = m
                break
            }
        }
        XCTAssertEqual(got?.id, id)
        XCTAssertEqual(got?.text, "through the stream")

        // receipts come through the sender's stream, in order
        let qs = quin.events
        try rita.markRead(localID: got!.localID)
        var states: [MessageState] = []
        for await event in qs {
            if case .receipt(let r) = event, r.id == id {
                states.append(r.state)
                if r.state == .read { break }
            }
        }
        XCTAssertEqual(states.last, .read)
        XCTAssertEqual(states, states.sorted(), "receipts never go backwards")

        // the stream ends when the client closes
        rita.close()
        var after = 0
        for await _ in stream {
            after += 1
        }
        XCTAssertLessThan(after, 100)
    }

    func testWaitsHonourCancellation() async throws {
        let sam = try HushClient(databasePath: path("sam"), databaseKey: testKey(9))
        clients.append(sam)
        try sam.createDevice(username: "sam")
        try sam.start(relayURL: "ws://127.0.0.1:1") // stays offline
        let t = Task { try await sam.waitOnline(timeout: 60) }
        usleep(200_000)
        let t0 = Date()
        t.cancel()
        do {
            try await t.value
            XCTFail("the wait returned")
        } catch is CancellationError {
        }
        XCTAssertLessThan(Date().timeIntervalSince(t0), 5)
        await expectError(.timeout) { try await sam.waitOnline(timeout: 0.3) }
        XCTAssertNotEqual(try sam.connectionState, .online)
    }
}
