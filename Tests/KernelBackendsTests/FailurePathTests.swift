import Foundation
import IOMMUBackends
import IOMMUCore
import TestSupport
import Testing

@testable import KernelBackends

/// The VFIO backend's refusals and rollbacks that need no kernel: a fake device directory whose
/// `vfio` and group nodes are plain files, so every ioctl says ENOTTY, and the daemon's own mmap
/// of a real shared-memory file.
@Suite("Kernel backend failure paths")
struct FailurePathTests {
    /// A device directory holding a plain file `vfio`, and a backend on it. Tests keep the
    /// value (not just the backend) so the directory lives as long as they do.
    final class FakeVFIO: Sendable {
        let root: TemporaryDirectory
        let backend: VFIOType1Backend

        init() throws {
            root = try TemporaryDirectory()
            try root.write("vfio", "")
            backend = VFIOType1Backend(uncheckedDevicePath: root.path)
        }
    }

    @Test func aMapWithoutTheTenantsMemoryIsRefusedBeforeAnythingElse() throws {
        let fake = try FakeVFIO()
        let backend = fake.backend
        let context = try backend.createContext()
        defer { fake.backend.destroyContext(context) }
        let error = backendError {
            try backend.map(
                range(0x1000, 0x1fff), memory: MemoryReference(handle: 1, offset: 0), protection: .read, in: context)
        }
        #expect(
            error?.description
                == "vfio-type1 map: EINVAL: a kernel backend needs the mapping's memory: pass a memfd")
    }

    @Test func aMapBeforeAnyGroupIsRefusedAndAnUnmapThenFindsNothing() throws {
        let fake = try FakeVFIO()
        let backend = fake.backend
        let context = try backend.createContext()
        defer { fake.backend.destroyContext(context) }
        let error = backendError {
            try backend.map(
                range(0x1000, 0x1fff), memory: MemoryReference(handle: 1, offset: 0), backing: BackingFile(fd: 0),
                protection: .read, in: context)
        }
        #expect(error?.detail == "no IOMMU group is attached to \(context)")
        #expect(try backend.unmap(range(0x1000, 0x1fff), in: context) == 0)
    }

    @Test func aMissingGroupNodeSaysHowToBindAndReservesNothing() throws {
        let fake = try FakeVFIO()
        let (root, backend) = (fake.root, fake.backend)
        let context = try backend.createContext()
        defer { fake.backend.destroyContext(context) }
        let error = backendError { try backend.attach(group: 7, to: context) }
        #expect(error?.errno == .ENOENT)
        #expect(
            error?.detail.hasPrefix("cannot open \(root.path)/7: is every device of group 7 bound to vfio-pci") == true)
        #expect(backend.context(of: 7) == nil)
    }

    @Test func aGroupNodeTheKernelDoesNotKnowIsClosedAgainAndTheGroupStaysFree() throws {
        let fake = try FakeVFIO()
        let (root, backend) = (fake.root, fake.backend)
        let group = try root.write("7", "")
        let context = try backend.createContext()
        defer { fake.backend.destroyContext(context) }
        let error = backendError { try backend.attach(group: 7, to: context) }
        #expect(error?.description == "kernel VFIO_GROUP_GET_STATUS: ENOTTY: group 7")
        #expect(backend.context(of: 7) == nil)
        #expect(openDescriptors(to: group) == 0)
        // Nothing half done: a second attempt fails the same way rather than with EBUSY.
        #expect(backendError { try backend.attach(group: 7, to: context) }?.errno.name == "ENOTTY")
    }

    @Test func destroyClosesTheContainerAndForgetsTheContext() throws {
        let fake = try FakeVFIO()
        let (root, backend) = (fake.root, fake.backend)
        let context = try backend.createContext()
        #expect(openDescriptors(to: root.path + "/vfio") == 1)
        backend.destroyContext(context)
        #expect(openDescriptors(to: root.path + "/vfio") == 0)
        #expect(backend.contexts.isEmpty)
        let error = backendError { try backend.unmap(range(0, 0xfff), in: context) }
        #expect(error?.description == "vfio-type1 unmap: ENOENT: no \(context)")
        backend.destroyContext(context)  // twice is harmless
    }

    @Test func aDeviceFDNeedsTheGroupAttachedToThatContext() throws {
        let fake = try FakeVFIO()
        let backend = fake.backend
        let context = try backend.createContext()
        defer { fake.backend.destroyContext(context) }
        let error = backendError { try backend.deviceFD("0000:00:03.0", group: 7, in: context) }
        #expect(error?.errno == .EINVAL)
        #expect(error?.detail == "group 7 is not attached to \(context)")
    }

    @Test func contextsAreNumberedAfreshAndNeverReused() throws {
        let fake = try FakeVFIO()
        let backend = fake.backend
        let first = try backend.createContext()
        backend.destroyContext(first)
        let second = try backend.createContext()
        defer { fake.backend.destroyContext(second) }
        #expect(second > first)
    }

    @Test func aGroupBelongsToOneContextAtATime() throws {
        let registry = ContextRegistry<Int>(backend: "vfio-type1")
        let first = registry.add(1)
        let second = registry.add(2)
        try registry.reserve(7, for: first)
        let elsewhere = backendError { try registry.reserve(7, for: second) }
        #expect(elsewhere?.description == "vfio-type1 attach: EBUSY: group 7 is already attached to \(first)")
        let again = backendError { try registry.reserve(7, for: first) }
        #expect(again?.detail == "group 7 is already attached to this context")
        registry.release([7])
        try registry.reserve(7, for: second)
        #expect(registry.owner(of: 7) == second)
    }

    @Test func contextsCreatedAndDestroyedFromManyTasksStayDistinctAndLeaveNothingOpen() async throws {
        let fake = try FakeVFIO()
        let ids = try await withThrowingTaskGroup(of: [BackendContextID].self) { group in
            for _ in 0..<8 {
                group.addTask {
                    var ids: [BackendContextID] = []
                    for _ in 0..<50 {
                        let context = try fake.backend.createContext()
                        _ = try fake.backend.unmap(range(0, 0xfff), in: context)
                        fake.backend.destroyContext(context)
                        ids.append(context)
                    }
                    return ids
                }
            }
            return try await group.reduce(into: []) { $0 += $1 }
        }
        #expect(Set(ids).count == 400)
        #expect(fake.backend.contexts.isEmpty)
        #expect(openDescriptors(to: fake.root.path + "/vfio") == 0)
    }

    // MARK: The daemon's mapping of tenant memory

    /// A shared-memory file like a memfd: on tmpfs, sized, opened read-write or read-only.
    static func sharedMemory(size: Int, readOnly: Bool = false) throws -> (path: String, fd: Int32) {
        let path = "/dev/shm/iommu-policyd-test-\(UUID().uuidString)"
        #expect(FileManager.default.createFile(atPath: path, contents: Data(count: size)))
        let fd = open(path, readOnly ? O_RDONLY | O_CLOEXEC : O_RDWR | O_CLOEXEC)
        #expect(fd >= 0)
        return (path, fd)
    }

    @Test func theDaemonMapsTheTenantsMemoryAtItsOffsetAndDropsItWithTheRange() throws {
        let (path, fd) = try Self.sharedMemory(size: 0x4000)
        defer {
            close(fd)
            unlink(path)
        }
        let first = range(0x10_0000, 0x10_1fff)
        let second = range(0x20_0000, 0x20_0fff)
        var mappings = DaemonMappings()
        mappings.insert(
            first,
            try mapTenantMemory(
                first, memory: MemoryReference(handle: 1, offset: 0x1000), backing: BackingFile(fd: fd),
                protection: .readWrite, backend: "test"))
        mappings.insert(
            second,
            try mapTenantMemory(
                second, memory: MemoryReference(handle: 1, offset: 0), backing: BackingFile(fd: fd), protection: .read,
                backend: "test"))
        let lines = daemonMappings(of: path)
        #expect(lines.count == 2)
        // The read-write one is shared, writable, at file offset 0x1000.
        #expect(lines.contains { $0.split(separator: " ")[1] == "rw-s" && $0.split(separator: " ")[2] == "00001000" })
        #expect(lines.contains { $0.split(separator: " ")[1] == "r--s" })
        mappings.unmapAll(inside: range(0x10_0000, 0x1f_ffff))
        #expect(daemonMappings(of: path).count == 1)
        #expect(mappings.count == 1)
        mappings.unmapAll()
        #expect(daemonMappings(of: path).isEmpty)
    }

    @Test func aReadOnlyMemfdCannotBackAMappingTheDeviceMayWrite() throws {
        let (path, fd) = try Self.sharedMemory(size: 0x1000, readOnly: true)
        defer {
            close(fd)
            unlink(path)
        }
        let error = backendError {
            try mapTenantMemory(
                range(0, 0xfff), memory: MemoryReference(handle: 1, offset: 0), backing: BackingFile(fd: fd),
                protection: .write, backend: "test")
        }
        #expect(error?.operation == "mmap")
        #expect(error?.errno.name == "EACCES")
        // Read-only for the device is fine.
        let mapping = try mapTenantMemory(
            range(0, 0xfff), memory: MemoryReference(handle: 1, offset: 0), backing: BackingFile(fd: fd),
            protection: .read, backend: "test")
        unmapDaemonMemory(mapping)
        #expect(daemonMappings(of: path).isEmpty)
    }

    @Test func theWholeSpaceAndEmptyProtectionsAreRefusedBeforeMmap() throws {
        let memory = MemoryReference(handle: 1, offset: 0)
        #expect(
            backendError {
                try mapTenantMemory(.all, memory: memory, backing: BackingFile(fd: 0), protection: .read, backend: "t")
            }?.errno == .EOVERFLOW)
        #expect(
            backendError {
                try mapTenantMemory(
                    range(0, 0xfff), memory: memory, backing: BackingFile(fd: 0), protection: [], backend: "t")
            }?.errno == .EINVAL)
    }
}
