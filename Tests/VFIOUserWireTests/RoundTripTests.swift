import Testing
import VFIOUserWire

@Suite("Encoding and decoding round trips and byte layouts")
struct RoundTripTests {
    @Test func headerLayoutIsMsgIDCommandSizeFlagsErrorLittleEndian() {
        var bytes: [UInt8] = []
        MessageHeader(
            messageID: 0x0201, command: 0x0403, messageSize: 0x0807_0605, flags: 0x0c0b_0a09, error: 0x100f_0e0d
        )
        .encode(into: &bytes)
        #expect(bytes == Array(1...16))
    }

    @Test func headersRoundTripForRandomFieldValues() {
        var rng = SplitMix64(state: 0x4ea0)
        for _ in 0..<5000 {
            let header = MessageHeader(
                messageID: rng.edgy(), command: rng.edgy(), messageSize: rng.edgy(), flags: rng.edgy(),
                error: rng.edgy())
            var bytes: [UInt8] = [0xaa, 0xbb]  // a prefix, so decoding a slice starts at index 2
            header.encode(into: &bytes)
            #expect(bytes.count == 2 + MessageHeader.size)
            #expect(MessageHeader(decoding: bytes.dropFirst(2)) == header)
        }
    }

    @Test func headerDecodingNeedsSixteenBytesAndIgnoresTheRest() {
        let bytes = Array(UInt8(1)...UInt8(20))
        #expect(MessageHeader(decoding: bytes.prefix(15)) == nil)
        #expect(MessageHeader(decoding: [UInt8]()) == nil)
        #expect(MessageHeader(decoding: bytes) == MessageHeader(decoding: bytes.prefix(16)))
        #expect(MessageHeader(decoding: bytes)?.error == 0x100f_0e0d)
    }

    @Test func headerPredicatesReadTypeNoReplyAndErrorBits() {
        func header(_ flags: UInt32) -> MessageHeader {
            MessageHeader(messageID: 0, command: 1, messageSize: 16, flags: flags, error: 0)
        }
        #expect(header(0).isCommand && !header(0).isReply && header(0).wantsReply && !header(0).isError)
        #expect(header(1).isReply && !header(1).isCommand)
        #expect(!header(0x10).wantsReply && header(0x10).isCommand)
        #expect(header(0x21).isError && header(0x21).isReply)
        for type in UInt32(2)...15 {
            #expect(!header(type).isCommand && !header(type).isReply)
        }
        // Bits above the type field do not change the type.
        #expect(header(0xffff_fff0).isCommand && header(0xffff_fff1).isReply)
    }

    @Test func dmaMapLayoutIsArgszFlagsOffsetAddressSize() {
        var bytes: [UInt8] = []
        DMAMapPayload(argsz: 32, flags: 3, offset: 0x1000, address: 0xfee0_0000, size: 0x20_0000).encode(into: &bytes)
        #expect(
            bytes == le(UInt32(32)) + le(UInt32(3)) + le(UInt64(0x1000)) + le(UInt64(0xfee0_0000))
                + le(UInt64(0x20_0000)))
    }

    @Test func dmaUnmapLayoutIsArgszFlagsAddressSize() {
        var bytes: [UInt8] = []
        DMAUnmapPayload(argsz: 24, flags: 2, address: 0x1234, size: 0x5678).encode(into: &bytes)
        #expect(bytes == le(UInt32(24)) + le(UInt32(2)) + le(UInt64(0x1234)) + le(UInt64(0x5678)))
    }

    @Test func fourWordPayloadLayoutsFollowDeclarationOrder() {
        var info: [UInt8] = []
        DeviceInfoPayload(argsz: 1, flags: 2, numRegions: 3, numIRQs: 4).encode(into: &info)
        #expect(info == le(UInt32(1)) + le(UInt32(2)) + le(UInt32(3)) + le(UInt32(4)))
        var attach: [UInt8] = []
        AttachGroupPayload(argsz: 5, flags: 6, group: 7, pad: 8).encode(into: &attach)
        #expect(attach == le(UInt32(5)) + le(UInt32(6)) + le(UInt32(7)) + le(UInt32(8)))
        var query: [UInt8] = []
        QueryRangesPayload(argsz: 9, flags: 10).encode(into: &query)
        #expect(query == le(UInt32(9)) + le(UInt32(10)))
    }

    @Test func defaultArgszIsEachStructsSize() {
        #expect(DMAMapPayload(flags: 0, offset: 0, address: 0, size: 0).argsz == 32)
        #expect(DMAUnmapPayload(flags: 0, address: 0, size: 0).argsz == 24)
        #expect(DeviceInfoPayload().argsz == 16)
        #expect(AttachGroupPayload(group: 1).argsz == 16)
        #expect(QueryRangesPayload().argsz == 8)
    }

    /// Encodes, checks the size, decodes from a slice that does not start at 0, and checks that
    /// one byte fewer does not decode.
    func roundTrip<P: Equatable>(
        _ value: P, size: Int, encode: (P, inout [UInt8]) -> Void, decode: (ArraySlice<UInt8>) -> P?
    ) {
        var bytes: [UInt8] = [0xff]
        encode(value, &bytes)
        #expect(bytes.count == 1 + size)
        #expect(decode(bytes.dropFirst()) == value)
        #expect(decode((bytes + [0x55]).dropFirst()) == value)
        #expect(decode(bytes.dropFirst().dropLast()) == nil)
    }

    @Test func everyFixedSizePayloadRoundTripsAndNeedsItsFullSize() {
        var rng = SplitMix64(state: 0xd1a9)
        for _ in 0..<2000 {
            roundTrip(
                DMAMapPayload(
                    argsz: rng.edgy(), flags: rng.edgy(), offset: rng.edgy(), address: rng.edgy(), size: rng.edgy()),
                size: DMAMapPayload.size, encode: { $0.encode(into: &$1) }, decode: { DMAMapPayload(decoding: $0) })
            roundTrip(
                DMAUnmapPayload(argsz: rng.edgy(), flags: rng.edgy(), address: rng.edgy(), size: rng.edgy()),
                size: DMAUnmapPayload.size, encode: { $0.encode(into: &$1) }, decode: { DMAUnmapPayload(decoding: $0) })
            roundTrip(
                DeviceInfoPayload(argsz: rng.edgy(), flags: rng.edgy(), numRegions: rng.edgy(), numIRQs: rng.edgy()),
                size: DeviceInfoPayload.size, encode: { $0.encode(into: &$1) },
                decode: { DeviceInfoPayload(decoding: $0) })
            roundTrip(
                AttachGroupPayload(argsz: rng.edgy(), flags: rng.edgy(), group: rng.edgy(), pad: rng.edgy()),
                size: AttachGroupPayload.size, encode: { $0.encode(into: &$1) },
                decode: { AttachGroupPayload(decoding: $0) })
            roundTrip(
                QueryRangesPayload(argsz: rng.edgy(), flags: rng.edgy()),
                size: QueryRangesPayload.size, encode: { $0.encode(into: &$1) },
                decode: { QueryRangesPayload(decoding: $0) })
        }
    }

    @Test func versionPayloadRoundTripsWithJSONAndAppendsOneNUL() {
        var rng = SplitMix64(state: 0x7e55)
        for _ in 0..<2000 {
            let version = VersionPayload(major: rng.edgy(), minor: rng.edgy(), json: rng.jsonWithoutNUL())
            var bytes: [UInt8] = []
            version.encode(into: &bytes)
            #expect(bytes.count == 4 + (version.json.isEmpty ? 0 : version.json.count + 1))
            if !version.json.isEmpty { #expect(bytes.last == 0) }
            #expect(VersionPayload(decoding: bytes) == version)
            #expect(VersionPayload(decoding: bytes.prefix(3)) == nil)
        }
    }

    @Test func versionLayoutIsMajorMinorThenJSONAndNUL() {
        var bytes: [UInt8] = []
        VersionPayload(major: 0, minor: 2, json: Array("{}".utf8)).encode(into: &bytes)
        #expect(bytes == [0, 0, 2, 0, 0x7b, 0x7d, 0])
    }

    @Test func emptyVersionJSONIsSentAsNoVersionDataAtAll() {
        var bytes: [UInt8] = []
        VersionPayload(major: 1, minor: 0, json: []).encode(into: &bytes)
        #expect(bytes == [1, 0, 0, 0])
        // A lone NUL, which another client might send, also means "no JSON".
        #expect(VersionPayload(decoding: [1, 0, 0, 0, 0]) == VersionPayload(major: 1, minor: 0, json: []))
    }

    @Test func randomValidRequestsSurviveEncoderFramerAndDecoder() {
        var rng = SplitMix64(state: 0x2001)
        var reader = FrameReader(maximumMessageSize: 4096)
        for index in 0..<3000 {
            let request = rng.validRequest()
            var bytes: [UInt8] = []
            RequestEncoder.encode(messageID: UInt16(truncatingIfNeeded: index), request: request, into: &bytes)
            reader.append(bytes)
            guard case .success(let frame) = reader.nextFrame() else {
                Issue.record("no frame for \(request)")
                return
            }
            #expect(frame.header.messageID == UInt16(truncatingIfNeeded: index))
            #expect(frame.header.command == request.command.rawValue)
            let fds = request.command == .dmaMap ? Int.random(in: 0...1, using: &rng) : 0
            #expect(RequestDecoder.decode(frame, fdCount: fds) == .success(request))
            #expect(reader.bufferedByteCount == 0)
        }
    }

    @Test func commandNumbersAreTheSpecsAndExtensionsSitAt0x1000AndUp() {
        #expect(Command.allCases.map(\.rawValue) == [1, 2, 3, 4, 0x1001, 0x1002, 0x1003, 0x1004])
        #expect(
            Command.allCases.map(\.description) == [
                "VERSION", "DMA_MAP", "DMA_UNMAP", "DEVICE_GET_INFO", "ATTACH_GROUP", "QUERY_RANGES", "EXPLAIN",
                "DEVICE_FD",
            ])
    }
}
