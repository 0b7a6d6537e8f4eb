import Foundation
import PolicyClient
import SystemPackage
import Testing
import UnixSockets
import VFIOUserWire

@Suite(.serialized) struct RobustnessTests {
    @Test func sixtyFourConcurrentClientsMapAndUnmapWithNothingLostOrDuplicated() throws {
        let daemon = try DaemonProcess(
            arguments: ["--profile", "x86-intel", "--profile-groups", "64"],
            config: "[defaults]\nmax_sessions = 64\n")
        let failures = FailureLog()
        DispatchQueue.concurrentPerform(iterations: 64) { index in
            do {
                let client = try daemon.client()
                try client.attach(group: UInt32(index))
                for round in 0..<20 {
                    let base = UInt64(round) << 24
                    for slot in 0..<4 {
                        try client.map(iova: base + UInt64(slot) * 0x10000, size: 0x10000)
                    }
                    // A duplicate is refused: the first map is really there.
                    do {
                        try client.map(iova: base, size: 0x10000)
                        failures.add("client \(index): duplicate map allowed")
                    } catch let error as PolicyError where error.errno == 17 {}
                    for slot in 0..<4 {
                        try client.unmap(iova: base + UInt64(slot) * 0x10000, size: 0x10000)
                    }
                    // Nothing is left: unmapping again finds nothing.
                    do {
                        try client.unmap(iova: base, size: 0x40000)
                        failures.add("client \(index): a mapping survived its unmap")
                    } catch let error as PolicyError where error.errno == 2 {}
                }
            } catch {
                failures.add("client \(index): \(error)")
            }
        }
        #expect(failures.entries.isEmpty, "\(failures.entries.prefix(5))")
    }

    /// Every malformed frame is judged, not just sent: a complete frame is followed by a valid
    /// DEVICE_GET_INFO probe, and the test reads until the probe's reply, so the daemon has
    /// answered (or dropped the connection for) everything before it. Frames that break the
    /// framing itself (a bad msg_size, a cut message) go on a fresh connection each.
    @Test func tenThousandMalformedFramesLeaveTheDaemonServingWithNoFdLeak() throws {
        let daemon = try DaemonProcess()
        let baseline = daemon.fdCount
        var rng = SplitMix64(state: 0xfeed_beef)
        let valid: [[UInt8]] = [
            RawConnection.version(),
            RawConnection.frame(command: 2, payload: mapPayload(iova: 0x1000, size: 0x1000)),
            RawConnection.frame(command: 3, payload: [24, 0, 0, 0] + Array(repeating: 0, count: 20)),
            RawConnection.frame(command: 4, payload: [16, 0, 0, 0] + Array(repeating: 0, count: 12)),
            RawConnection.frame(command: 0x1001, payload: [16, 0, 0, 0] + Array(repeating: 0, count: 12)),
            RawConnection.frame(command: 0x1002, payload: [8, 0, 0, 0, 0, 0, 0, 0]),
            RawConnection.frame(command: 0x1003, payload: mapPayload(iova: 0xfee0_0000, size: 0x1000)),
        ]
        let probe = RawConnection.frame(
            id: 0xffff, command: 4, payload: [16, 0, 0, 0] + Array(repeating: 0, count: 12))
        var judged = 0
        var framingBreakers = 0
        var raw = try RawConnection(daemon.socketPath)
        while judged + framingBreakers < 10_000 {
            var frame = valid[Int(rng.next() % UInt64(valid.count))]
            let mutation = rng.next() % 8
            switch mutation {
            case 0:
                // Garbage with a consistent msg_size.
                frame = (0..<Int(16 + rng.next() % 48)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            case 1, 2, 3:
                for _ in 0..<Int(rng.next() % 4 + 1) {
                    frame[Int(rng.next() % UInt64(frame.count))] = UInt8(truncatingIfNeeded: rng.next())
                }
            default:
                break
            }
            if mutation == 4 || mutation == 5 {
                // Break the framing: a cut message then a hang-up, or a bad msg_size.
                let cut = mutation == 4
                if cut {
                    try? raw.send(Array(frame.prefix(Int(rng.next() % UInt64(frame.count)))))
                } else {
                    let size: UInt32 =
                        rng.next() % 2 == 0 ? UInt32(rng.next() % 16) : UInt32(4097 + rng.next() % 100_000)
                    frame.replaceSubrange(4..<8, with: withUnsafeBytes(of: size.littleEndian, Array.init))
                    try? raw.send(frame)
                    _ = try? raw.receive()
                }
                raw.close()
                raw = try RawConnection(daemon.socketPath)
                framingBreakers += 1
                continue
            }
            // Keep msg_size consistent and clear no_reply, so the frame is judged and answered.
            frame.replaceSubrange(4..<8, with: withUnsafeBytes(of: UInt32(frame.count).littleEndian, Array.init))
            frame[8] &= ~0x10
            var fds: [FileDescriptor] = []
            if rng.next() % 10 == 0, let memfd = try? Memfd.create(name: "fuzz", size: 0x2000) { fds = [memfd] }
            if rng.next() % 40 == 0, let memfd = try? Memfd.create(name: "fuzz", size: 0x2000) { fds.append(memfd) }
            let sent = (try? raw.send(frame + probe, fds: fds)) != nil
            for fd in fds { try? fd.close() }
            var answered = false
            while sent, let reply = try? raw.receive() {
                if reply.header.messageID == 0xffff && reply.header.command == 4 {
                    answered = true
                    break
                }
            }
            if answered {
                judged += 1
            } else {
                // The daemon hung up (it may, for a frame it cannot frame); start again.
                raw.close()
                raw = try RawConnection(daemon.socketPath)
                framingBreakers += 1
            }
        }
        raw.close()
        #expect(judged > 5000)
        #expect(daemon.log.components(separatedBy: "audit.event=protocol-error").count > 1000)
        do {
            let client = try daemon.client()
            try client.map(iova: 0x4000_0000, size: 0x1000)
            #expect(throws: PolicyError.self) { try client.map(iova: 0xfee0_0000, size: 0x1000) }
            try client.unmapAll()
            client.close()
        }
        do {
            try daemon.eventually("the daemon's fd count to return to its baseline", timeout: 15) {
                daemon.fdCount == baseline
            }
        } catch {
            let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(daemon.pid)/fd")) ?? []
            let targets = fds.map {
                (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(daemon.pid)/fd/\($0)")) ?? "?"
            }
            Issue.record("baseline \(baseline), now \(daemon.fdCount): \(targets.sorted())")
            throw error
        }
    }

    @Test func aUidThatIsNotATenantIsRefusedWithEPERM() throws {
        let daemon = try DaemonProcess(config: "[[tenant]]\nuid = 0\n")
        let result = try run(
            "/usr/bin/setpriv",
            [
                "--reuid", "65534", "--regid", "65534", "--clear-groups", DaemonProcess.binary("iommu-policyctl"),
                "--socket", daemon.socketPath, "explain", "--iova", "0x1000", "--size", "0x1000",
            ])
        #expect(result.status == 1, "\(result.stdout)\(result.stderr)")
        #expect(result.stdout.contains("EPERM"))
        #expect(result.stdout.contains("uid 65534"))
        try daemon.eventually("the refusal in the audit trail") {
            daemon.log.contains("session-refused") && daemon.log.contains("tenant.uid=65534")
        }
        // Root, which the rule names, is still served.
        #expect(try daemon.client().explain(iova: 0x1000, size: 0x1000).allowed)
    }

    @Test func aUidOverItsSessionLimitIsRefused() throws {
        let daemon = try DaemonProcess(config: "[defaults]\nmax_sessions = 2\n")
        let a = try daemon.client()
        let b = try daemon.client()
        do {
            _ = try daemon.client()
            Issue.record("a third session was admitted")
        } catch let error as PolicyError {
            #expect(error.errno == 1)
        }
        _ = (a, b)
    }

    @Test func aClientThatNeverSendsVersionIsClosedAfterTheHandshakeTimeout() throws {
        let daemon = try DaemonProcess(config: "[defaults]\nhandshake_timeout = 0.3\nmessage_timeout = 0.3\n")
        let silent = try RawConnection(daemon.socketPath)
        #expect(try silent.isClosedByPeer())
        let halfway = try RawConnection(daemon.socketPath)
        try halfway.send(Array(RawConnection.version().prefix(10)))
        #expect(try halfway.isClosedByPeer())
        #expect(try daemon.client().explain(iova: 0x1000, size: 0x1000).allowed)
    }

    @Test func sigtermReleasesEverySessionAndExitsZero() throws {
        let daemon = try DaemonProcess()
        let client = try daemon.client()
        try client.map(iova: 0x1000, size: 0x1000)
        #expect(daemon.stop() == 0)
        #expect(daemon.log.contains("released 1 mapping(s)"))
        #expect(!FileManager.default.fileExists(atPath: daemon.socketPath))
    }
}

final class FailureLog: @unchecked Sendable {
    private let lock = NSLock()
    private var items: [String] = []
    func add(_ item: String) { lock.withLock { items.append(item) } }
    var entries: [String] { lock.withLock { items } }
}
