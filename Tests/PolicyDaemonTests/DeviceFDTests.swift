import Foundation
import PolicyClient
import Testing

/// DEVICE_FD through the real daemon. The simulated backend has no devices, so the furthest a
/// request can get is the backend's ENOSYS; the kernel backends are proven in the VM rig.
@Suite struct DeviceFDTests {
    func daemon() throws -> (DaemonProcess, TemporaryDirectory) {
        let directory = try TemporaryDirectory(prefix: "policyd-devicefd")
        let machine = MachineRoot(root: directory.path + "/root")
        try machine.group(0)
        try machine.device("0000:00:02.0", group: 0, bar: 0xc000_0000...0xc000_ffff)
        try machine.group(1)
        try machine.device("0000:00:03.0", group: 1, bar: 0xd000_0000...0xd000_0fff)
        return (try DaemonProcess(arguments: ["--sysfs-root", machine.root]), directory)
    }

    func errno(_ body: () throws -> Void) -> Int32? {
        do {
            try body()
            return nil
        } catch let error as PolicyError {
            return error.errno
        } catch {
            return -1
        }
    }

    @Test func aDeviceOfAGroupTheSessionHasNotAttachedIsEPERM() throws {
        let (daemon, _) = try daemon()
        let client = try daemon.client()
        try client.attach(group: 0)
        #expect(errno { _ = try client.deviceFD(group: 1, device: "0000:00:03.0") } == EPERM)
        // The log is written by its own thread, after the reply.
        try daemon.eventually("the denial's audit record") { daemon.log.contains("audit.event=device-denied") }
    }

    @Test func aDeviceTheGroupDoesNotHaveIsENOENT() throws {
        let (daemon, _) = try daemon()
        let client = try daemon.client()
        try client.attach(group: 0)
        #expect(errno { _ = try client.deviceFD(group: 0, device: "0000:00:03.0") } == ENOENT)
    }

    @Test func theSimulatedBackendHasNoDevicesToGive() throws {
        let (daemon, _) = try daemon()
        let client = try daemon.client()
        try client.attach(group: 0)
        #expect(errno { _ = try client.deviceFD(group: 0, device: "0000:00:02.0") } == ENOSYS)
        // The session goes on.
        try client.map(iova: 0x4000_0000, size: 0x1000)
    }
}
