import SystemPackage
import Testing
import UnixSockets

#if canImport(Glibc)
    import Glibc
#endif

@Suite("The system-call funnel")
struct SystemCallTests {
    @Test func eintrIsRetriedUntilTheCallSucceeds() throws {
        var attempts = 0
        let result = try syscall("fake") { () -> Int32 in
            attempts += 1
            if attempts < 3 {
                errno = EINTR
                return -1
            }
            return 42
        }
        #expect(result == 42)
        #expect(attempts == 3)
    }

    @Test func anyOtherErrnoIsThrownOnceNamingTheCall() {
        var attempts = 0
        let error = systemCallError {
            _ = try syscall("fake") { () -> Int in
                attempts += 1
                errno = EAGAIN
                return -1
            }
        }
        #expect(error == SystemCallError(call: "fake", errno: .resourceTemporarilyUnavailable))
        #expect(attempts == 1)
    }

    @Test func nonNegativeResultsOtherThanMinusOnePassThrough() throws {
        #expect(try syscall("fake") { Int32(0) } == 0)
        #expect(try syscall("fake") { -2 as Int } == -2)
    }

    @Test func theDescriptionNamesTheCallTheMessageAndTheConstant() {
        #expect(
            SystemCallError(call: "bind", errno: .addressInUse).description
                == "bind: Address already in use (EADDRINUSE)")
        #expect(SystemCallError.symbolicName(Errno(rawValue: 4095)) == "errno 4095")
    }
}
