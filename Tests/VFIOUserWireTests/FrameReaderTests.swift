import Testing
import VFIOUserWire

/// Three messages of different sizes, back to back.
func sampleStream() -> (bytes: [UInt8], headers: [MessageHeader], payloads: [[UInt8]]) {
    var bytes: [UInt8] = []
    let payloads = [validPayload(.version), validPayload(.dmaMap), []]
    let commands: [UInt16] = [1, 2, 0x1002]
    for (index, payload) in payloads.enumerated() {
        bytes += message(id: UInt16(index), command: commands[index], payload: payload)
    }
    let headers = payloads.indices.map { index in
        MessageHeader(
            messageID: UInt16(index), command: commands[index], messageSize: UInt32(16 + payloads[index].count),
            flags: 0,
            error: 0)
    }
    return (bytes, headers, payloads)
}

/// Every frame currently available; records an issue on a framing error.
func drain(_ reader: inout FrameReader) -> [Frame] {
    var frames: [Frame] = []
    while let next = reader.nextFrame() {
        switch next {
        case .success(let frame): frames.append(frame)
        case .failure(let error):
            Issue.record("unexpected framing error: \(error)")
            return frames
        }
    }
    return frames
}

@Suite("FrameReader")
struct FrameReaderTests {
    @Test func aNewReaderHasNothingBufferedAndNoFrame() {
        var reader = FrameReader(maximumMessageSize: 4096)
        #expect(reader.bufferedByteCount == 0)
        #expect(reader.nextFrame() == nil)
        #expect(reader.maximumMessageSize == 4096)
    }

    @Test func byteAtATimeDeliveryYieldsEachFrameExactlyWhenItsLastByteArrives() {
        let (bytes, headers, payloads) = sampleStream()
        var reader = FrameReader(maximumMessageSize: 4096)
        var frames: [Frame] = []
        var ends: [Int] = []
        for (index, byte) in bytes.enumerated() {
            reader.append(CollectionOfOne(byte))
            let got = drain(&reader)
            if !got.isEmpty { ends.append(index + 1) }
            frames += got
        }
        #expect(frames.map(\.header) == headers)
        #expect(frames.map { Array($0.payload) } == payloads)
        #expect(ends == [16 + payloads[0].count, 32 + payloads[0].count + payloads[1].count, bytes.count])
        #expect(reader.bufferedByteCount == 0)
    }

    @Test func bufferedByteCountCountsAHalfReceivedMessage() {
        let (bytes, _, _) = sampleStream()
        var reader = FrameReader(maximumMessageSize: 4096)
        reader.append(bytes.prefix(10))
        #expect(reader.bufferedByteCount == 10)
        #expect(reader.nextFrame() == nil)
        reader.append(bytes[10..<20])
        #expect(reader.bufferedByteCount == 20)
        #expect(reader.nextFrame() == nil)
        reader.append(bytes[20...])
        #expect(reader.bufferedByteCount == bytes.count)
        _ = reader.nextFrame()
        #expect(reader.bufferedByteCount == bytes.count - 16 - validPayload(.version).count)
        _ = drain(&reader)
        #expect(reader.bufferedByteCount == 0)
    }

    @Test func severalFramesInOneChunkComeOutInOrder() {
        let (bytes, headers, payloads) = sampleStream()
        var reader = FrameReader(maximumMessageSize: 4096)
        reader.append(bytes + bytes)
        let frames = drain(&reader)
        #expect(frames.map(\.header) == headers + headers)
        #expect(frames.map { Array($0.payload) } == payloads + payloads)
    }

    @Test func aFrameSplitAtEveryPositionIsReassembled() {
        let one = message(id: 9, command: 2, payload: validPayload(.dmaMap))
        for split in 0..<one.count {
            var reader = FrameReader(maximumMessageSize: 64)
            reader.append(one[..<split])
            #expect(reader.nextFrame() == nil)
            reader.append(one[split...])
            let frames = drain(&reader)
            #expect(frames.count == 1)
            #expect(frames.first.map { Array($0.payload) } == validPayload(.dmaMap))
        }
    }

    @Test func aHeaderOnlyFrameHasAnEmptyPayload() {
        var reader = FrameReader(maximumMessageSize: 4096)
        reader.append(message(command: 1, payload: []))
        guard case .success(let frame) = reader.nextFrame() else {
            Issue.record("expected a frame")
            return
        }
        #expect(frame.header.messageSize == 16)
        #expect(frame.payload.isEmpty)
        #expect(reader.bufferedByteCount == 0)
    }

    @Test(arguments: [UInt32(0), 1, 15])
    func aMsgSizeBelowTheHeaderIsAFramingErrorCarryingTheHeader(size: UInt32) {
        var reader = FrameReader(maximumMessageSize: 4096)
        let bytes = message(id: 0x4242, command: 2, payload: [], messageSize: size)
        reader.append(bytes)
        let header = MessageHeader(decoding: bytes)!
        let expected = FramingError(
            header: header, errno: WireErrno.EINVAL, reason: "msg_size \(size) is smaller than the 16-byte header")
        #expect(reader.nextFrame() == .failure(expected))
        #expect(reader.nextFrame() == .failure(expected), "the reader cannot resynchronise, so the error repeats")
        reader.append(message(command: 1, payload: []))
        #expect(reader.nextFrame() == .failure(expected))
    }

    @Test func aFramingErrorWaitsForTheWholeHeader() {
        var reader = FrameReader(maximumMessageSize: 4096)
        let bytes = message(command: 2, payload: [], messageSize: 0)
        reader.append(bytes.prefix(15))
        #expect(reader.nextFrame() == nil)
        reader.append(bytes.suffix(1))
        #expect(reader.nextFrame()?.failure?.errno == WireErrno.EINVAL)
    }

    @Test func theMaximumSizeIsAcceptedAndOneMoreIsEMSGSIZE() {
        let maximum = 4096
        var reader = FrameReader(maximumMessageSize: maximum)
        reader.append(message(id: 1, command: 2, payload: Array(repeating: 0xab, count: maximum - 16)))
        #expect(reader.nextFrame()?.success?.payload.count == maximum - 16)

        for size in [maximum + 1, Int(UInt32.max)] {
            var reader = FrameReader(maximumMessageSize: maximum)
            let bytes = message(id: 2, command: 1, payload: [], messageSize: UInt32(size))
            reader.append(bytes)
            let expected = FramingError(
                header: MessageHeader(decoding: bytes)!, errno: WireErrno.EMSGSIZE,
                reason: "msg_size \(size) exceeds the maximum of \(maximum)")
            #expect(reader.nextFrame() == .failure(expected))
        }
    }

    @Test func aMaximumOfSixteenAcceptsOnlyHeaderOnlyFrames() {
        var reader = FrameReader(maximumMessageSize: 16)
        reader.append(message(command: 1, payload: []) + message(command: 1, payload: [0]))
        #expect(reader.nextFrame()?.success?.payload.isEmpty == true)
        #expect(reader.nextFrame()?.failure?.errno == WireErrno.EMSGSIZE)
    }

    @Test func framesStayIntactWhenTheReaderIsFedAfterwards() {
        let (bytes, _, payloads) = sampleStream()
        var reader = FrameReader(maximumMessageSize: 4096)
        reader.append(bytes)
        let held = drain(&reader)
        // Compaction and overwrite of the buffer must not reach the frames already handed out.
        reader.append(Array(repeating: 0xee, count: 3000))
        _ = reader.receive(upTo: 100) { space in
            space.initializeMemory(as: UInt8.self, repeating: 0xdd)
            return 100
        }
        #expect(held.map { Array($0.payload) } == payloads)
    }

    @Test func receiveWritesStraightIntoTheBufferAndKeepsOnlyWhatWasWritten() {
        let (bytes, headers, _) = sampleStream()
        var reader = FrameReader(maximumMessageSize: 4096)
        var offset = 0
        var frames: [Frame] = []
        while offset < bytes.count {
            let written = reader.receive(upTo: 7) { space in
                let count = min(5, bytes.count - offset)  // less than offered, as recvmsg may return
                for index in 0..<count { space[index] = bytes[offset + index] }
                return count
            }
            #expect(written == min(5, bytes.count - offset))
            offset += written
            frames += drain(&reader)
        }
        #expect(frames.map(\.header) == headers)
        #expect(reader.bufferedByteCount == 0)
    }

    @Test func aThrowingReceiveKeepsNothing() {
        struct Interrupted: Error {}
        var reader = FrameReader(maximumMessageSize: 4096)
        reader.append([1, 2, 3])
        #expect(throws: Interrupted.self) {
            try reader.receive(upTo: 64) { space in
                space[0] = 9
                throw Interrupted()
            }
        }
        #expect(reader.bufferedByteCount == 3)
        #expect(reader.receive(upTo: 0) { _ in 0 } == 0)
        #expect(reader.bufferedByteCount == 3)
    }

    @Test func rawBufferAppendMatchesCollectionAppend() {
        let (bytes, headers, _) = sampleStream()
        var reader = FrameReader(maximumMessageSize: 4096)
        bytes.withUnsafeBytes { raw in
            reader.append(UnsafeRawBufferPointer(rebasing: raw[..<20]))
            reader.append(UnsafeRawBufferPointer(rebasing: raw[20...]))
        }
        #expect(drain(&reader).map(\.header) == headers)
    }

    @Test func aLongInterleavedStreamNeverLosesOrReordersBytes() {
        var rng = SplitMix64(state: 0xf00d)
        var reader = FrameReader(maximumMessageSize: 512)
        var sent: [[UInt8]] = []
        var stream: [UInt8] = []
        for index in 0..<4000 {
            let payload = rng.bytes(count: Int.random(in: 0...496, using: &rng))
            sent.append(payload)
            stream += message(id: UInt16(truncatingIfNeeded: index), command: 2, payload: payload)
        }
        var received: [[UInt8]] = []
        var offset = 0
        while offset < stream.count {
            let count = min(Int.random(in: 1...1500, using: &rng), stream.count - offset)
            reader.append(stream[offset..<(offset + count)])
            offset += count
            received += drain(&reader).map { Array($0.payload) }
            #expect(reader.bufferedByteCount < 512)
        }
        #expect(received == sent)
    }
}
