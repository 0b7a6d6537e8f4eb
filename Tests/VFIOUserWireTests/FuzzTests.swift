import Testing
import VFIOUserWire

/// A message for the fuzzer: usually a valid request, mutated by one or more of the things a
/// hostile or buggy client does.
func fuzzMessage(_ rng: inout SplitMix64) -> [UInt8] {
    var bytes: [UInt8] = []
    RequestEncoder.encode(messageID: rng.edgy(), request: rng.validRequest(), into: &bytes)
    for _ in 0..<Int.random(in: 0...3, using: &rng) {
        switch Int.random(in: 0..<9, using: &rng) {
        case 0:  // flip a bit anywhere
            let index = Int.random(in: 0..<bytes.count, using: &rng)
            bytes[index] ^= 1 << UInt8.random(in: 0...7, using: &rng)
        case 1:  // a new msg_size, often near the real one
            let size: UInt32 =
                Bool.random(using: &rng)
                ? UInt32(clamping: max(0, bytes.count + Int.random(in: -3...3, using: &rng))) : rng.edgy()
            bytes.replaceSubrange(4..<8, with: le(size))
        case 2:  // a new command number
            let command: UInt16 =
                Bool.random(using: &rng) ? Command.allCases.randomElement(using: &rng)!.rawValue : rng.edgy()
            bytes.replaceSubrange(2..<4, with: le(command))
        case 3:  // new header flags or error
            bytes.replaceSubrange(8..<12, with: le(UInt32(rng.edgy(UInt8.self) & 0x7f)))
            if Bool.random(using: &rng) { bytes.replaceSubrange(12..<16, with: le(rng.edgy(UInt32.self))) }
        case 4:  // truncate the payload and fix msg_size to match
            bytes.removeLast(Int.random(in: 0...(bytes.count - 16), using: &rng))
            bytes.replaceSubrange(4..<8, with: le(UInt32(bytes.count)))
        case 5:  // extend the payload and fix msg_size to match
            bytes += rng.bytes(count: Int.random(in: 1...40, using: &rng))
            bytes.replaceSubrange(4..<8, with: le(UInt32(bytes.count)))
        case 6:  // overwrite a payload word (argsz, flags, reserved fields)
            if bytes.count >= 20 {
                let offset = 16 + 4 * Int.random(in: 0..<((bytes.count - 16) / 4), using: &rng)
                bytes.replaceSubrange(offset..<(offset + 4), with: le(rng.edgy(UInt32.self)))
            }
        case 7:  // sprinkle NULs (hits VERSION's data)
            let index = Int.random(in: 16...bytes.count, using: &rng)
            bytes.insert(0, at: index)
            bytes.replaceSubrange(4..<8, with: le(UInt32(bytes.count)))
        default:  // entirely random bytes with a plausible size
            let count = Int.random(in: 16...80, using: &rng)
            bytes = rng.bytes(count: count)
            if Bool.random(using: &rng) { bytes.replaceSubrange(4..<8, with: le(UInt32(count))) }
        }
    }
    return bytes
}

@Suite("Fuzzing the framer and decoder")
struct FuzzTests {
    /// Every outcome is a frame, a framing error or a decode result, and each is consistent:
    /// frames have exactly msg_size bytes, framing errors really are out of bounds, refusals use
    /// the errnos the rules define, and anything accepted re-encodes to an equal request.
    @Test func mutatedFramesThroughFrameReaderAndRequestDecoderAlwaysGiveAConsistentOutcome() {
        var rng = SplitMix64(state: 0xfa22)
        let maximum = 256
        var reader = FrameReader(maximumMessageSize: maximum)
        var counts = (frames: 0, framingErrors: 0, accepted: 0, refused: 0)
        var pending: [UInt8] = []
        var messagesSent = 0
        while messagesSent < 30_000 {
            pending += fuzzMessage(&rng)
            messagesSent += 1
            // Deliver in random pieces, sometimes holding part of the stream back.
            while !pending.isEmpty && Bool.random(using: &rng) {
                let count = min(pending.count, Int.random(in: 1...300, using: &rng))
                reader.append(pending.prefix(count))
                pending.removeFirst(count)
            }
            while let outcome = reader.nextFrame() {
                switch outcome {
                case .failure(let error):
                    counts.framingErrors += 1
                    let size = Int(error.header.messageSize)
                    #expect(size < 16 || size > maximum)
                    #expect(error.errno == (size < 16 ? WireErrno.EINVAL : WireErrno.EMSGSIZE))
                    // The stream is lost: a daemon closes it, so start a fresh connection.
                    reader = FrameReader(maximumMessageSize: maximum)
                    pending.removeAll()
                case .success(let frame):
                    counts.frames += 1
                    #expect(frame.payload.count == Int(frame.header.messageSize) - 16)
                    // Mostly the fds a well-behaved client sends, so that decoding gets past the fd rule.
                    let fds =
                        Int.random(in: 0..<4, using: &rng) == 0
                        ? Int.random(in: -1...3, using: &rng)
                        : (frame.header.command == Command.dmaMap.rawValue ? Int.random(in: 0...1, using: &rng) : 0)
                    switch RequestDecoder.decode(frame, fdCount: fds) {
                    case .success(let request):
                        counts.accepted += 1
                        #expect(request.command.rawValue == frame.header.command)
                        #expect(frame.header.isCommand && !frame.header.isError && frame.header.error == 0)
                        #expect(fds == 0 || (fds == 1 && request.command == .dmaMap))
                        var again: [UInt8] = []
                        RequestEncoder.encode(messageID: 1, request: request, into: &again)
                        #expect(decode(again) == .success(request))
                    case .failure(let error):
                        counts.refused += 1
                        #expect([WireErrno.EINVAL, WireErrno.ENOSYS].contains(error.errno))
                        #expect(!error.reason.isEmpty)
                    }
                }
            }
        }
        #expect(counts.frames + counts.framingErrors >= 20_000)
        #expect(counts.frames == counts.accepted + counts.refused)
        // The mutations must exercise every kind of outcome, or the fuzzer proves little.
        #expect(counts.accepted > 3000)
        #expect(counts.refused > 1000)
        #expect(counts.framingErrors > 100)
    }

    @Test func randomHeadersAndPayloadsGivenStraightToTheDecoderNeverEscapeTheErrnoSet() {
        var rng = SplitMix64(state: 0xdec0de)
        var refusedWith: Set<Int32> = []
        for _ in 0..<20_000 {
            let payload = rng.bytes(count: Int.random(in: 0...40, using: &rng))
            let size: UInt32 = Int.random(in: 0..<8, using: &rng) == 0 ? rng.edgy() : UInt32(16 + payload.count)
            let command: UInt16 =
                Bool.random(using: &rng) ? Command.allCases.randomElement(using: &rng)!.rawValue : rng.edgy()
            let header = MessageHeader(
                messageID: rng.edgy(), command: command, messageSize: size,
                flags: Bool.random(using: &rng) ? 0 : rng.edgy(), error: Bool.random(using: &rng) ? 0 : rng.edgy())
            let result = RequestDecoder.decode(
                header: header, payload: payload, fdCount: Int.random(in: -2...2, using: &rng))
            if case .failure(let error) = result { refusedWith.insert(error.errno) }
        }
        #expect(refusedWith == [WireErrno.EINVAL, WireErrno.ENOSYS])
    }
}
