import Foundation
import PolicyClient
import SystemPackage
import Testing
import UnixSockets

@Suite(.serialized) struct MappingTests {
    @Test func aMapAtTheMSIWindowIsDeniedWithTheReasonAndAnAllowedOneSucceeds() throws {
        let daemon = try DaemonProcess()
        let client = try daemon.client()
        #expect(throws: Never.self) { try client.map(iova: 0x4000_0000, size: 0x20_0000) }
        do {
            try client.map(iova: 0xfee0_0000, size: 0x1000)
            Issue.record("the MSI window was mapped")
        } catch let error as PolicyError {
            #expect(error.errno == 22)
            #expect(error.conflict?.kind == "msi")
            #expect(error.conflict?.first == 0xfee0_0000)
            #expect(error.conflict?.source == "profile x86-intel")
            #expect(error.reason?.contains("msi region 0xfee00000-0xfeefffff") == true)
        }
    }

    @Test func withoutErrorDetailAnErrorReplyIsOnlyTheHeader() throws {
        let daemon = try DaemonProcess()
        let client = try daemon.client(errorDetail: false)
        var payload: [UInt8] = []
        payload = mapPayload(iova: 0xfee0_0000, size: 0x1000)
        var message: [UInt8] = []
        MessageHeaderBytes.append(id: 99, command: 2, size: UInt32(16 + payload.count), into: &message)
        try client.send(message + payload)
        let reply = try client.receiveFrame()
        #expect(reply.header.isError)
        #expect(reply.header.error == 22)
        #expect(reply.header.messageSize == 16)
        #expect(reply.payload.isEmpty)
    }

    @Test func aPassedMemfdMustHoldTheMappedBytesAndIsKeptForTheMappingsLife() throws {
        let daemon = try DaemonProcess()
        let client = try daemon.client()
        let baseline = daemon.fdCount
        let small = try Memfd.create(name: "small", size: 0x2000)
        defer { try? small.close() }
        #expect(throws: PolicyError.self) { try client.map(iova: 0x10_0000, size: 0x4000, memory: small) }
        #expect(throws: PolicyError.self) {
            try client.map(iova: 0x10_0000, size: 0x2000, memory: small, offset: 0x1000)
        }
        #expect(daemon.fdCount == baseline)
        try client.map(iova: 0x10_0000, size: 0x1000, memory: small, offset: 0x1000)
        #expect(daemon.fdCount == baseline + 1)
        try client.unmap(iova: 0x10_0000, size: 0x1000)
        #expect(daemon.fdCount == baseline)
    }

    @Test func aPipeIsNotMemoryAMapCanBack() throws {
        let daemon = try DaemonProcess()
        let client = try daemon.client()
        let pipe = try FileDescriptor.pipe()
        defer {
            try? pipe.readEnd.close()
            try? pipe.writeEnd.close()
        }
        #expect(throws: PolicyError.self) { try client.map(iova: 0x10_0000, size: 0x1000, memory: pipe.readEnd) }
    }

    @Test func unmapFollowsVFIOv2AndUnmapAllEmptiesTheSession() throws {
        let daemon = try DaemonProcess()
        let client = try daemon.client()
        try client.map(iova: 0x10000, size: 0x10000)
        try client.map(iova: 0x30000, size: 0x1000)
        #expect((try? client.unmap(iova: 0x10000, size: 0x1000)) == nil)
        #expect(throws: PolicyError.self) { try client.unmap(iova: 0x20000, size: 0x1000) }
        try client.unmap(iova: 0x10000, size: 0x21000)
        try client.map(iova: 0x10000, size: 0x1000)
        try client.unmapAll()
        try client.map(iova: 0x10000, size: 0x1000)
    }

    @Test func explainDecidesWithoutChangingAnything() throws {
        let daemon = try DaemonProcess()
        let client = try daemon.client()
        let allowed = try client.explain(iova: 0x1000, size: 0x1000)
        #expect(allowed.allowed)
        #expect(allowed.errno == 0)
        try client.map(iova: 0x1000, size: 0x1000)
        let taken = try client.explain(iova: 0x1000, size: 0x1000)
        #expect(!taken.allowed)
        #expect(taken.errno == 17)
        #expect(taken.conflict?.kind == "mapping")
        let msi = try client.explain(iova: 0xfedf_f000, size: 0x2000)
        #expect(msi.errno == 22)
        #expect(msi.conflict?.kind == "msi")
        #expect(msi.json.contains("\"decision\":\"deny\""))
    }

    @Test func queryRangesReportsTheApertureUsableRangesAndReservedRegions() throws {
        let daemon = try DaemonProcess(arguments: ["--profile", "x86-intel", "--aperture-bits", "39"])
        let client = try daemon.client()
        let ranges = try client.ranges()
        #expect(ranges.aperture?.first == 0)
        #expect(ranges.aperture?.last == 0x7f_ffff_ffff)
        #expect(ranges.pageSizes == 0x4020_1000)
        #expect(ranges.usable.map { [$0.first, $0.last] } == [[0, 0xfedf_ffff], [0xfef0_0000, 0x7f_ffff_ffff]])
        #expect(ranges.reserved.map(\.kind) == ["msi", "outside-aperture"])
        #expect(ranges.reserved.last?.last == UInt64.max)
    }
}

@Suite(.serialized) struct GroupTests {
    static let twoGroups = ["--profile", "x86-intel", "--profile-groups", "2"]

    @Test func aMapBeforeAnyGroupIsAttachedIsEINVALWhenTheTenantMayAttachSeveral() throws {
        let daemon = try DaemonProcess(arguments: Self.twoGroups)
        let client = try daemon.client()
        do {
            try client.map(iova: 0x1000, size: 0x1000)
            Issue.record("mapped with no group attached")
        } catch let error as PolicyError {
            #expect(error.errno == 22)
        }
        try client.attach(group: 1)
        try client.map(iova: 0x1000, size: 0x1000)
    }

    @Test func aTenantWithOneGroupHasItAttachedAtItsFirstMap() throws {
        let daemon = try DaemonProcess(arguments: Self.twoGroups, config: "[[tenant]]\nuid = 0\ngroups = [1]\n")
        let client = try daemon.client()
        try client.map(iova: 0x1000, size: 0x1000)
        let other = try daemon.client()
        do {
            try other.attach(group: 1)
            Issue.record("a second session attached a held group")
        } catch let error as PolicyError {
            #expect(error.errno == 16)
        }
    }

    @Test func attachErrorsAreENOENTForUnknownAndEPERMForForbiddenGroups() throws {
        let daemon = try DaemonProcess(arguments: Self.twoGroups, config: "[[tenant]]\nuid = 0\ngroups = [0]\n")
        let client = try daemon.client()
        #expect(throws: PolicyError.self) { try client.attach(group: 9) }
        do {
            try client.attach(group: 9)
        } catch let error as PolicyError {
            #expect(error.errno == 2)
        }
        do {
            try client.attach(group: 1)
            Issue.record("attached a group the policy forbids")
        } catch let error as PolicyError {
            #expect(error.errno == 1)
        }
    }

    @Test func twoTenantsCompeteForAGroupAndDisconnectReleasesIt() throws {
        let daemon = try DaemonProcess()
        var first: PolicyClient? = try daemon.client()
        try first?.attach(group: 0)
        try first?.map(iova: 0x10_0000, size: 0x10_0000)
        let second = try daemon.client()
        do {
            try second.attach(group: 0)
            Issue.record("both sessions hold group 0")
        } catch let error as PolicyError {
            #expect(error.errno == 16)
        }
        first = nil
        try daemon.eventually("group 0 to be released") {
            (try? second.attach(group: 0)) != nil
        }
        // The first session's mapping is gone: the same IOVA maps again.
        try second.map(iova: 0x10_0000, size: 0x10_0000)
        try daemon.eventually("the first session's close record") { daemon.log.contains("released 1 mapping(s)") }
    }
}
