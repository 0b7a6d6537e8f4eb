import Testing
import VFIOUserWire

/// A valid payload for each command, to change one field at a time.
func validPayload(_ command: Command) -> [UInt8] {
    var bytes: [UInt8] = []
    switch command {
    case .version: VersionPayload(major: 0, minor: 1, json: Array("{}".utf8)).encode(into: &bytes)
    case .dmaMap, .explain:
        DMAMapPayload(flags: 3, offset: 0, address: 0x10_0000, size: 0x1000).encode(into: &bytes)
    case .dmaUnmap: DMAUnmapPayload(flags: 0, address: 0x10_0000, size: 0x1000).encode(into: &bytes)
    case .deviceGetInfo: DeviceInfoPayload().encode(into: &bytes)
    case .attachGroup: AttachGroupPayload(group: 7).encode(into: &bytes)
    case .queryRanges: QueryRangesPayload().encode(into: &bytes)
    case .deviceFD: DeviceFDPayload(group: 7, device: "0000:00:03.0").encode(into: &bytes)
    }
    return bytes
}

/// `payload` with the little-endian u32 at `offset` replaced.
func setting(_ payload: [UInt8], u32 value: UInt32, at offset: Int) -> [UInt8] {
    var bytes = payload
    bytes.replaceSubrange(offset..<(offset + 4), with: le(value))
    return bytes
}

@Suite("RequestDecoder: the header rules")
struct RequestHeaderRuleTests {
    @Test func everyCommandWithAValidPayloadAndHeaderIsAccepted() {
        for command in Command.allCases {
            #expect(decode(command: command, payload: validPayload(command)).success?.command == command)
        }
    }

    @Test func aReplyTypeMessageIsRefusedAsNotACommand() {
        let result = decode(message(command: 2, flags: MessageHeader.typeReply, payload: validPayload(.dmaMap)))
        #expect(result == .failure(WireError(errno: einval, reason: "message type 1 is a reply, expected a command")))
    }

    @Test(arguments: UInt32(2)...15)
    func undefinedMessageTypesAreRefused(type: UInt32) {
        let result = decode(message(command: 2, flags: type, payload: validPayload(.dmaMap)))
        #expect(
            result
                == .failure(WireError(errno: einval, reason: "message type \(type) is undefined, expected a command")))
    }

    @Test func theErrorFlagOnACommandIsRefused() {
        let result = decode(message(command: 1, flags: MessageHeader.errorFlag, payload: validPayload(.version)))
        #expect(result == .failure(WireError(errno: einval, reason: "error flag set on a command")))
    }

    @Test(arguments: [UInt32(1), 22, 0x8000_0000, UInt32.max])
    func aNonZeroErrorFieldInACommandIsRefused(error: UInt32) {
        let result = decode(message(command: 4, error: error, payload: validPayload(.deviceGetInfo)))
        #expect(result == .failure(WireError(errno: einval, reason: "error field \(error) must be 0 in a command")))
    }

    @Test(arguments: 6..<32)
    func undefinedHeaderFlagBitsAreRefused(bit: Int) {
        let flags = UInt32(1) << bit
        let result = decode(message(command: 3, flags: flags, payload: validPayload(.dmaUnmap)))
        #expect(result.failure?.errno == einval)
        #expect(
            result.failure?.reason.hasPrefix("header flags 0x\(String(flags, radix: 16)) set undefined bits") == true)
    }

    @Test func noReplyIsAcceptedOnACommand() {
        let result = decode(message(command: 2, flags: MessageHeader.noReplyFlag, payload: validPayload(.dmaMap)))
        #expect(result.success?.command == .dmaMap)
    }

    @Test func aMsgSizeThatDisagreesWithThePayloadIsRefused() {
        let payload = validPayload(.queryRanges)
        for size: UInt32 in [0, 16, 23, 25, UInt32.max] {
            let result = decode(message(command: 0x1002, payload: payload, messageSize: size))
            #expect(result.failure?.errno == einval)
            #expect(result.failure?.reason == "msg_size \(size) does not match the 16-byte header and 8-byte payload")
        }
    }

    @Test(arguments: [UInt16(0), 5, 6, 13, 18, 31, 0x1000, 0x1005, 0x7fff, 0xffff])
    func unknownCommandsAreENOSYS(command: UInt16) {
        let result = decode(message(command: command, payload: validPayload(.dmaMap)))
        #expect(
            result
                == .failure(
                    WireError(errno: WireErrno.ENOSYS, reason: "unknown command 0x\(String(command, radix: 16))")))
    }

    @Test func headerProblemsAreReportedBeforeAnUnknownCommand() {
        let result = decode(message(command: 0xffff, flags: MessageHeader.typeReply, payload: []))
        #expect(result.failure?.errno == einval)
    }

    @Test func anUnknownCommandIsReportedBeforeItsFds() {
        #expect(decode(message(command: 5, payload: []), fds: 3).failure?.errno == WireErrno.ENOSYS)
    }
}

@Suite("RequestDecoder: file descriptors")
struct RequestFDRuleTests {
    @Test(arguments: [0, 1])
    func dmaMapTakesZeroOrOneFd(fds: Int) {
        #expect(decode(command: .dmaMap, payload: validPayload(.dmaMap), fds: fds).success?.command == .dmaMap)
    }

    @Test(arguments: [2, 3, 253])
    func dmaMapRefusesMoreThanOneFd(fds: Int) {
        let result = decode(command: .dmaMap, payload: validPayload(.dmaMap), fds: fds)
        #expect(result == .failure(WireError(errno: einval, reason: "DMA_MAP carries at most one fd, got \(fds)")))
    }

    @Test(arguments: [Command.version, .dmaUnmap, .deviceGetInfo, .attachGroup, .queryRanges, .explain, .deviceFD])
    func everyOtherCommandRefusesAnyFd(command: Command) {
        #expect(decode(command: command, payload: validPayload(command), fds: 0).success?.command == command)
        for fds in [1, 2] {
            let result = decode(command: command, payload: validPayload(command), fds: fds)
            #expect(result == .failure(WireError(errno: einval, reason: "\(command) carries no fds, got \(fds)")))
        }
    }

    @Test func theReasonsNameTheCommandAsTheSpecDoes() {
        #expect(
            decode(command: .version, payload: validPayload(.version), fds: 1).failure?.reason
                == "VERSION carries no fds, got 1")
        #expect(
            decode(command: .explain, payload: validPayload(.explain), fds: 1).failure?.reason
                == "EXPLAIN carries no fds, got 1")
    }

    @Test(arguments: Command.allCases)
    func aNegativeFdCountIsRefused(command: Command) {
        let result = decode(command: command, payload: validPayload(command), fds: -1)
        #expect(result == .failure(WireError(errno: einval, reason: "fd count -1 is negative")))
    }

    @Test func fdsAreCheckedBeforeThePayload() {
        let result = decode(command: .dmaMap, payload: [], fds: 2)
        #expect(result.failure?.reason == "DMA_MAP carries at most one fd, got 2")
    }
}

@Suite("RequestDecoder: VERSION")
struct VersionRuleTests {
    @Test(arguments: 0..<4)
    func aPayloadShorterThanMajorAndMinorIsRefused(count: Int) {
        let result = decode(command: .version, payload: Array(repeating: 1, count: count))
        #expect(
            result == .failure(WireError(errno: einval, reason: "VERSION payload \(count) bytes, expected at least 4")))
    }

    @Test func exactlyMajorAndMinorIsAcceptedWithEmptyJSON() {
        let result = decode(command: .version, payload: [0, 0, 2, 0])
        #expect(result == .success(.version(VersionPayload(major: 0, minor: 2, json: []))))
    }

    @Test func jsonIsReturnedWithoutItsNULAndUnparsed() {
        let json = Array(#"{"capabilities": {"max_msg_fds": 8}"#.utf8)  // not even valid JSON: not our job
        let result = decode(command: .version, payload: [0, 0, 1, 0] + json + [0])
        #expect(result == .success(.version(VersionPayload(major: 0, minor: 1, json: json))))
    }

    @Test func aLoneNULIsAcceptedAsEmptyJSON() {
        #expect(
            decode(command: .version, payload: [0, 0, 1, 0, 0])
                == .success(.version(VersionPayload(major: 0, minor: 1, json: []))))
    }

    @Test func versionDataWithoutATerminatingNULIsRefused() {
        for data in [Array("{}".utf8), [0x7b], [0, 0x7d]] {
            let result = decode(command: .version, payload: [0, 0, 1, 0] + data)
            #expect(result == .failure(WireError(errno: einval, reason: "version data is not NUL-terminated")))
        }
    }

    @Test func versionDataWithANULBeforeItsEndIsRefused() {
        let cases: [([UInt8], Int)] = [([0, 0], 4), ([0x7b, 0, 0x7d, 0], 5), ([0x7b, 0x7d, 0, 0], 6)]
        for (data, offset) in cases {
            let result = decode(command: .version, payload: [0, 0, 1, 0] + data)
            #expect(
                result
                    == .failure(
                        WireError(
                            errno: einval, reason: "version data has a NUL at payload offset \(offset) before its end"))
            )
        }
    }

    @Test func versionPayloadDecodingAgreesWithTheDecoder() {
        #expect(VersionPayload(decoding: [0, 0, 1, 0, 0x7b]) == nil)
        #expect(VersionPayload(decoding: [0, 0, 1, 0, 0, 0]) == nil)
        #expect(VersionPayload(decoding: [0, 0, 1, 0, 0x7b, 0])?.json == [0x7b])
    }
}

@Suite("RequestDecoder: fixed-size payloads at their boundaries")
struct FixedPayloadRuleTests {
    static let sizes: [(Command, Int)] = [
        (.dmaMap, 32), (.explain, 32), (.dmaUnmap, 24), (.deviceGetInfo, 16), (.attachGroup, 16), (.queryRanges, 8),
        (.deviceFD, 32),
    ]

    @Test(arguments: sizes)
    func aPayloadOneByteShortOrLongIsRefused(command: Command, size: Int) {
        let valid = validPayload(command)
        #expect(valid.count == size)
        #expect(decode(command: command, payload: valid).success?.command == command)
        for payload in [Array(valid.dropLast()), valid + [0], [], valid + valid] {
            let result = decode(command: command, payload: payload)
            #expect(
                result
                    == .failure(
                        WireError(errno: einval, reason: "\(command) payload \(payload.count) bytes, expected \(size)"))
            )
        }
    }

    @Test(arguments: [
        (Command.dmaMap, 32), (.explain, 32), (.dmaUnmap, 24), (.attachGroup, 16), (.queryRanges, 8), (.deviceFD, 32),
    ])
    func argszMustBeExactlyTheStructSize(command: Command, size: Int) {
        let exact = UInt32(size)
        for argsz in [exact - 1, exact + 1, 0, UInt32.max] {
            let result = decode(command: command, payload: setting(validPayload(command), u32: argsz, at: 0))
            #expect(result == .failure(WireError(errno: einval, reason: "\(command) argsz \(argsz), expected \(size)")))
        }
    }

    @Test func dmaMapAndExplainPassEveryFieldThroughUnjudged() {
        let map = DMAMapPayload(flags: 0xffff_ffff, offset: 0x123, address: UInt64.max, size: 0)
        var payload: [UInt8] = []
        map.encode(into: &payload)
        #expect(decode(command: .dmaMap, payload: payload) == .success(.dmaMap(map)))
        #expect(decode(command: .explain, payload: payload) == .success(.explain(map)))
    }

    @Test func dmaUnmapPassesFlagsThroughForThePolicyEngine() {
        let unmap = DMAUnmapPayload(flags: 0xdead_beef, address: 5, size: 0)
        var payload: [UInt8] = []
        unmap.encode(into: &payload)
        #expect(decode(command: .dmaUnmap, payload: payload) == .success(.dmaUnmap(unmap)))
    }

    @Test func deviceGetInfoArgszIsAMinimumBecauseItLimitsTheReply() {
        for argsz in [UInt32(16), 17, 4096, UInt32.max] {
            let result = decode(
                command: .deviceGetInfo, payload: setting(validPayload(.deviceGetInfo), u32: argsz, at: 0))
            #expect(result == .success(.deviceGetInfo(DeviceInfoPayload(argsz: argsz))))
        }
        for argsz in [UInt32(15), 0] {
            let result = decode(
                command: .deviceGetInfo, payload: setting(validPayload(.deviceGetInfo), u32: argsz, at: 0))
            #expect(
                result
                    == .failure(
                        WireError(errno: einval, reason: "DEVICE_GET_INFO argsz \(argsz), below the 16-byte reply")))
        }
    }

    @Test(arguments: [(4, "flags"), (8, "num_regions"), (12, "num_irqs")])
    func deviceGetInfoFieldsOtherThanArgszMustBeZero(offset: Int, field: String) {
        for value in [UInt32(1), 0x8000_0000] {
            let result = decode(
                command: .deviceGetInfo, payload: setting(validPayload(.deviceGetInfo), u32: value, at: offset))
            #expect(
                result
                    == .failure(
                        WireError(
                            errno: einval, reason: "DEVICE_GET_INFO \(field) 0x\(String(value, radix: 16)) must be 0")))
        }
    }

    @Test(arguments: [(4, "flags"), (12, "pad")])
    func attachGroupReservedFieldsMustBeZero(offset: Int, field: String) {
        for value in [UInt32(1), UInt32.max] {
            let result = decode(
                command: .attachGroup, payload: setting(validPayload(.attachGroup), u32: value, at: offset))
            #expect(
                result
                    == .failure(
                        WireError(
                            errno: einval, reason: "ATTACH_GROUP \(field) 0x\(String(value, radix: 16)) must be 0")))
        }
    }

    @Test(arguments: [(4, "flags"), (12, "pad")])
    func deviceFDReservedFieldsMustBeZero(offset: Int, field: String) {
        let result = decode(command: .deviceFD, payload: setting(validPayload(.deviceFD), u32: 1, at: offset))
        #expect(result == .failure(WireError(errno: einval, reason: "DEVICE_FD \(field) 0x1 must be 0")))
    }

    @Test func deviceFDNamesAPrintableNulTerminatedNulPaddedDevice() {
        let valid = validPayload(.deviceFD)
        #expect(
            decode(command: .deviceFD, payload: valid).success
                == .deviceFD(DeviceFDPayload(group: 7, device: "0000:00:03.0")))
        var bad: [[UInt8]] = []
        bad.append(Array(valid[..<16]) + [UInt8](repeating: 0, count: 16))  // empty
        bad.append(Array(valid[..<16]) + [UInt8](repeating: 0x41, count: 16))  // no NUL
        var gap = valid
        gap[16 + 13] = 0x41  // a byte after the terminating NUL
        bad.append(gap)
        var control = valid
        control[16] = 0x0a
        bad.append(control)
        for payload in bad {
            #expect(
                decode(command: .deviceFD, payload: payload).failure?.reason
                    == "DEVICE_FD device must be a NUL-terminated PCI address in printable ASCII, NUL-padded")
        }
    }

    @Test func attachGroupAcceptsAnyGroupNumber() {
        for group in [UInt32(0), 7, UInt32.max] {
            let result = decode(command: .attachGroup, payload: setting(validPayload(.attachGroup), u32: group, at: 8))
            #expect(result == .success(.attachGroup(AttachGroupPayload(group: group))))
        }
    }

    @Test func queryRangesFlagsMustBeZero() {
        for value in [UInt32(1), 0x10, UInt32.max] {
            let result = decode(command: .queryRanges, payload: setting(validPayload(.queryRanges), u32: value, at: 4))
            #expect(
                result
                    == .failure(
                        WireError(errno: einval, reason: "QUERY_RANGES flags 0x\(String(value, radix: 16)) must be 0")))
        }
    }

    @Test func aWrongArgszIsReportedBeforeAReservedField() {
        var payload = setting(validPayload(.attachGroup), u32: 17, at: 0)
        payload = setting(payload, u32: 1, at: 4)
        #expect(decode(command: .attachGroup, payload: payload).failure?.reason == "ATTACH_GROUP argsz 17, expected 16")
    }

    @Test func decodingAcceptsAnyByteCollectionNotJustArrays() {
        let header = MessageHeader(
            messageID: 1, command: Command.queryRanges.rawValue, messageSize: 24, flags: 0, error: 0)
        let payload = AnyCollection(validPayload(.queryRanges))
        #expect(RequestDecoder.decode(header: header, payload: payload, fdCount: 0) == .success(.queryRanges(.init())))
    }

    @Test func wireErrorDescribesErrnoByNameAndNumber() {
        #expect(
            WireError(errno: einval, reason: "DMA_MAP argsz 31, expected 32").description
                == "EINVAL (22): DMA_MAP argsz 31, expected 32")
        #expect(WireError(errno: 1234, reason: "x").description == "errno 1234 (1234): x")
        #expect(WireErrno.name(of: WireErrno.ENOSYS) == "ENOSYS")
    }
}
