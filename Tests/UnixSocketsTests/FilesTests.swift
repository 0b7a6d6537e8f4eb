import SystemPackage
import Testing
import UnixSockets

#if canImport(Glibc)
    import Glibc
#endif

@Suite("Memfds, fstat and descriptor counts")
struct FilesTests {
    @Test func aMemfdHasTheRequestedSizeAndIsARegularCloseOnExecFile() throws {
        for size: UInt64 in [0, 1, 4096, 3 << 20] {
            let fd = try Memfd.create(name: uniqueName("size"), size: size)
            defer { try? fd.close() }
            let info = try FileInfo.stat(fd)
            #expect(info.size == size)
            #expect(info.isRegular)
            #expect(fcntl(fd.rawValue, F_GETFD) & FD_CLOEXEC != 0)
        }
    }

    @Test func aMemfdTooLargeForAnOffsetIsRefusedWithoutLeaking() throws {
        let name = uniqueName("huge")
        let error = systemCallError { _ = try Memfd.create(name: name, size: UInt64.max) }
        #expect(error == SystemCallError(call: "ftruncate", errno: .fileTooLarge))
        #expect(openMemfds(named: name) == 0)
    }

    @Test func aMemfdNameTooLongIsRefused() throws {
        let error = systemCallError { _ = try Memfd.create(name: String(repeating: "n", count: 300), size: 1) }
        #expect(error == SystemCallError(call: "memfd_create", errno: .invalidArgument))
    }

    @Test func aSocketIsNotARegularFile() throws {
        let (a, b) = try UnixSocket.pair()
        defer {
            a.close()
            b.close()
        }
        #expect(try FileInfo.stat(a.fd).isRegular == false)
    }

    @Test func fdCountCountsOnlyOpenDescriptorsAndSeesEachOneOpenedAndClosed() throws {
        let name = uniqueName("count")
        #expect(openMemfds(named: name) == 0)
        let fds = try (0..<10).map { _ in try Memfd.create(name: name, size: 1) }
        #expect(openMemfds(named: name) == 10)
        for fd in fds.prefix(4) { try fd.close() }
        #expect(openMemfds(named: name) == 6)
        for fd in fds.dropFirst(4) { try fd.close() }
        #expect(openMemfds(named: name) == 0)
    }

    @Test func fdCountOfThisProcessAgreesWithItsOwnProcDirectory() throws {
        // Other suites run in parallel in this process, so allow for their fds coming and
        // going; 40 of our own must still show.
        let before = FDCount.current()
        #expect(before >= 3)
        let fds = try (0..<40).map { _ in try Memfd.create(name: uniqueName("total"), size: 1) }
        let during = FDCount.current()
        #expect(abs(during - (before + 40)) <= 10)
        if let viaPid = FDCount.of(pid: getpid()) {
            #expect(abs(viaPid - during) <= 10)
        } else {
            Issue.record("FDCount.of(pid: getpid()) returned nil")
        }
        for fd in fds { try fd.close() }
        #expect(abs(FDCount.current() - before) <= 10)
    }

    @Test func fdCountOfAProcessThatDoesNotExistIsNil() {
        // Above the kernel's pid_max limit (4194304), so no process has it.
        #expect(FDCount.of(pid: Int32.max) == nil)
    }
}
