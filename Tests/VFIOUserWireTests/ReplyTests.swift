import Testing
import VFIOUserWire

let mapRequest = MessageHeader(messageID: 0xbeef, command: 2, messageSize: 48, flags: 0, error: 0)

/// The single frame in `bytes`.
func frame(_ bytes: [UInt8]) -> Frame {
    var reader = FrameReader(maximumMessageSize: 1 << 16)
    reader.append(bytes)
    return reader.nextFrame()!.success!
}

@Suite("ReplyEncoder")
struct ReplyEncoderTests {
    @Test func aSuccessReplyEchoesIDAndCommandWithTypeReplyAndCoversItsPayload() {
        var bytes: [UInt8] = [0x99]  // appends, never overwrites
        ReplyEncoder.success(to: mapRequest, payload: [1, 2, 3], into: &bytes)
        #expect(
            bytes == [0x99] + le(UInt16(0xbeef)) + le(UInt16(2)) + le(UInt32(19)) + le(UInt32(1)) + le(UInt32(0)) + [
                1, 2, 3,
            ])
    }

    @Test func aSuccessReplyWithoutPayloadIsTheHeaderAlone() {
        var bytes: [UInt8] = []
        ReplyEncoder.success(to: mapRequest, payload: [UInt8](), into: &bytes)
        #expect(
            MessageHeader(decoding: bytes)
                == MessageHeader(messageID: 0xbeef, command: 2, messageSize: 16, flags: 1, error: 0))
        #expect(bytes.count == 16)
    }

    @Test func anErrorReplyWithoutDetailIsOnlyTheHeader() {
        var bytes: [UInt8] = []
        ReplyEncoder.error(to: mapRequest, errno: WireErrno.EEXIST, detail: nil, into: &bytes)
        #expect(bytes == le(UInt16(0xbeef)) + le(UInt16(2)) + le(UInt32(16)) + le(UInt32(0x21)) + le(UInt32(17)))
    }

    @Test func anErrorReplyWithDetailCarriesItAfterTheHeaderAndCountsIt() {
        let detail = Array("overlaps msi region 0xfee00000-0xfeefffff (source: sysfs group 7)".utf8)
        var bytes: [UInt8] = []
        ReplyEncoder.error(to: mapRequest, errno: WireErrno.EINVAL, detail: detail, into: &bytes)
        let header = MessageHeader(decoding: bytes)!
        #expect(
            header
                == MessageHeader(
                    messageID: 0xbeef, command: 2, messageSize: UInt32(16 + detail.count), flags: 0x21, error: 22))
        #expect(Array(bytes.dropFirst(16)) == detail)
    }

    @Test func anEmptyDetailGivesTheSameBytesAsNoDetail() {
        var none: [UInt8] = []
        var empty: [UInt8] = []
        ReplyEncoder.error(to: mapRequest, errno: 1, detail: nil, into: &none)
        ReplyEncoder.error(to: mapRequest, errno: 1, detail: [], into: &empty)
        #expect(none == empty)
    }

    @Test func anErrorReplyToANoReplyCommandStillHasOnlyReplyAndErrorFlags() {
        let request = MessageHeader(
            messageID: 3, command: 3, messageSize: 40, flags: MessageHeader.noReplyFlag, error: 0)
        var bytes: [UInt8] = []
        ReplyEncoder.error(to: request, errno: 2, detail: nil, into: &bytes)
        #expect(MessageHeader(decoding: bytes)?.flags == MessageHeader.typeReply | MessageHeader.errorFlag)
    }
}

@Suite("RequestEncoder and ReplyDecoder: the client side")
struct ClientSideTests {
    @Test func requestEncoderWritesACommandHeaderAndThePayload() {
        var bytes: [UInt8] = []
        RequestEncoder.encode(messageID: 5, command: .queryRanges, payload: validPayload(.queryRanges), into: &bytes)
        #expect(bytes == message(id: 5, command: 0x1002, payload: validPayload(.queryRanges)))
        var quiet: [UInt8] = []
        RequestEncoder.encode(messageID: 5, command: .dmaUnmap, payload: [UInt8](), noReply: true, into: &quiet)
        #expect(
            MessageHeader(decoding: quiet)
                == MessageHeader(messageID: 5, command: 3, messageSize: 16, flags: 0x10, error: 0))
    }

    @Test func encodingARequestEqualsEncodingItsPayloadUnderItsCommand() {
        var rng = SplitMix64(state: 0xc11e)
        for _ in 0..<500 {
            let request = rng.validRequest()
            var payload: [UInt8] = []
            request.encodePayload(into: &payload)
            var viaPayload: [UInt8] = [0x42]
            var viaRequest: [UInt8] = [0x42]
            RequestEncoder.encode(
                messageID: 77, command: request.command, payload: payload, noReply: true, into: &viaPayload)
            RequestEncoder.encode(messageID: 77, request: request, noReply: true, into: &viaRequest)
            #expect(viaPayload == viaRequest)
        }
    }

    @Test func aSuccessReplyDecodesToItsPayload() {
        var bytes: [UInt8] = []
        ReplyEncoder.success(to: mapRequest, payload: [7, 8], into: &bytes)
        #expect(ReplyDecoder.decode(frame(bytes), for: mapRequest) == .success(.success(payload: [7, 8])))
    }

    @Test func anErrorReplyDecodesToErrnoAndDetail() {
        var bare: [UInt8] = []
        ReplyEncoder.error(to: mapRequest, errno: WireErrno.ENOSPC, detail: nil, into: &bare)
        #expect(ReplyDecoder.decode(frame(bare), for: mapRequest) == .success(.failure(errno: 28, detail: [])))
        var detailed: [UInt8] = []
        ReplyEncoder.error(to: mapRequest, errno: WireErrno.EINVAL, detail: Array("why".utf8), into: &detailed)
        #expect(
            ReplyDecoder.decode(frame(detailed), for: mapRequest)
                == .success(.failure(errno: 22, detail: ArraySlice("why".utf8))))
    }

    @Test func anErrorFlagWithErrnoZeroIsPassedThrough() {
        let bytes = message(id: 0xbeef, command: 2, flags: 0x21, error: 0, payload: [])
        #expect(ReplyDecoder.decode(frame(bytes), for: mapRequest) == .success(.failure(errno: 0, detail: [])))
    }

    @Test func aReplyThatDoesNotMatchItsRequestIsEPROTO() {
        let cases: [([UInt8], String)] = [
            (message(id: 0xbeef, command: 2, flags: 0, payload: []), "message type 0 is not a reply"),
            (message(id: 0xbeef, command: 2, flags: 3, payload: []), "message type 3 is not a reply"),
            (message(id: 1, command: 2, flags: 1, payload: []), "reply msg_id 1 does not match request msg_id 48879"),
            (
                message(id: 0xbeef, command: 3, flags: 1, payload: []),
                "reply command 0x3 does not match request command 0x2"
            ),
            (
                message(id: 0xbeef, command: 2, flags: 0x11, payload: []),
                "reply flags 0x11 set bits a reply does not use"
            ),
            (
                message(id: 0xbeef, command: 2, flags: 0x41, payload: []),
                "reply flags 0x41 set bits a reply does not use"
            ),
            (message(id: 0xbeef, command: 2, flags: 1, error: 22, payload: []), "reply has error 22 but no error flag"),
        ]
        for (bytes, reason) in cases {
            #expect(
                ReplyDecoder.decode(frame(bytes), for: mapRequest)
                    == .failure(WireError(errno: WireErrno.EPROTO, reason: reason)))
        }
    }

    @Test func aHandBuiltFrameWhoseSizeDisagreesWithItsPayloadIsEPROTO() {
        let header = MessageHeader(messageID: 0xbeef, command: 2, messageSize: 20, flags: 1, error: 0)
        let result = ReplyDecoder.decode(Frame(header: header, payload: [1]), for: mapRequest)
        #expect(result.failure?.errno == WireErrno.EPROTO)
        #expect(result.failure?.reason == "reply msg_size 20 does not match its 1-byte payload")
    }

    @Test func aClientAndServerConversationRoundTrips() {
        // Client: VERSION then a DMA_MAP with an fd.
        var wire: [UInt8] = []
        let version = VersionPayload(major: 0, minor: 2, json: Array(#"{"capabilities":{}}"#.utf8))
        let map = DMAMapPayload(flags: 3, offset: 0, address: 0x10_0000, size: 0x1000)
        RequestEncoder.encode(messageID: 1, request: .version(version), into: &wire)
        RequestEncoder.encode(messageID: 2, request: .dmaMap(map), into: &wire)

        // Server: frame, decode, reply.
        var server = FrameReader(maximumMessageSize: 4096)
        server.append(wire)
        var replies: [UInt8] = []
        var requests: [MessageHeader] = []
        while case .success(let frame)? = server.nextFrame() {
            requests.append(frame.header)
            switch RequestDecoder.decode(frame, fdCount: frame.header.command == 2 ? 1 : 0) {
            case .success(.version(let offered)):
                var payload: [UInt8] = []
                VersionPayload(major: offered.major, minor: offered.minor, json: Array("{}".utf8)).encode(
                    into: &payload)
                ReplyEncoder.success(to: frame.header, payload: payload, into: &replies)
            case .success(.dmaMap):
                ReplyEncoder.error(to: frame.header, errno: WireErrno.EEXIST, detail: nil, into: &replies)
            default:
                Issue.record("unexpected decode of \(frame.header)")
            }
        }

        // Client: match replies to requests.
        var client = FrameReader(maximumMessageSize: 4096)
        client.append(replies)
        let first = ReplyDecoder.decode(client.nextFrame()!.success!, for: requests[0])
        guard case .success(.success(let payload)) = first else {
            Issue.record("VERSION reply: \(first)")
            return
        }
        #expect(VersionPayload(decoding: payload) == VersionPayload(major: 0, minor: 2, json: Array("{}".utf8)))
        #expect(
            ReplyDecoder.decode(client.nextFrame()!.success!, for: requests[1])
                == .success(.failure(errno: 17, detail: [])))
    }
}
