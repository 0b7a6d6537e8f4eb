/// One complete message cut from the stream: its header and exactly `messageSize - 16` payload
/// bytes. The payload is a slice of the reader's buffer, so cutting a frame copies nothing;
/// its indices do not start at 0.
public struct Frame: Hashable, Sendable {
    public var header: MessageHeader
    public var payload: ArraySlice<UInt8>

    public init(header: MessageHeader, payload: ArraySlice<UInt8>) {
        self.header = header
        self.payload = payload
    }
}

/// A header whose msg_size cannot be honoured. The stream has no frame markers, so after such
/// a header the reader cannot tell where the next message starts: the caller replies with
/// `errno` (the header lets the reply echo msg_id and command) and closes the connection.
public struct FramingError: Error, Hashable, Sendable, CustomStringConvertible {
    public var header: MessageHeader
    /// EINVAL for a msg_size below the header's own 16 bytes, EMSGSIZE above the maximum.
    public var errno: Int32
    public var reason: String

    public init(header: MessageHeader, errno: Int32, reason: String) {
        self.header = header
        self.errno = errno
        self.reason = reason
    }

    public var description: String { "\(WireErrno.name(of: errno)) (\(errno)): \(reason)" }
}

/// The pure part of the stream reader: bytes in, frames out. vfio-user runs over a stream
/// socket, so one read may hold part of a message or several; the header's msg_size is the
/// only boundary (vfio-user.rst, "Header").
///
/// Buffering: one `[UInt8]` and a read index. Frames are slices of it and consuming one only
/// moves the index; consumed bytes are dropped (by moving the unread tail to the front) when
/// more bytes arrive. With `receive(upTo:_:)` a daemon can `recvmsg` straight into that buffer,
/// so once the buffer has grown to its working size, receiving and framing allocate nothing.
/// The buffer holds at most the bytes appended since the last time every complete frame was
/// taken, plus one partial frame, so a caller that drains frames before reading again and reads
/// at most N bytes at a time bounds it by N plus the maximum message size.
public struct FrameReader: Sendable {
    /// The largest msg_size accepted, header included.
    public let maximumMessageSize: Int
    private var storage: [UInt8] = []
    private var readIndex = 0

    /// `maximumMessageSize` must be at least the 16-byte header.
    public init(maximumMessageSize: Int) {
        precondition(maximumMessageSize >= MessageHeader.size, "a message is at least its 16-byte header")
        self.maximumMessageSize = maximumMessageSize
        storage.reserveCapacity(maximumMessageSize)
    }

    /// Bytes received but not yet returned as a frame. Non-zero between messages means a
    /// message is half-received, which the daemon times out.
    public var bufferedByteCount: Int { storage.count - readIndex }

    /// Appends received bytes.
    public mutating func append(_ bytes: some Collection<UInt8>) {
        compact()
        storage.append(contentsOf: bytes)
    }

    /// Appends received bytes from a raw buffer (a concrete overload, so the copy is a memcpy
    /// even though callers in other modules cannot specialise the generic one).
    public mutating func append(_ bytes: UnsafeRawBufferPointer) {
        compact()
        storage.append(contentsOf: bytes)
    }

    /// Lets `body` write up to `count` bytes directly into the buffer (for example with one
    /// `recvmsg`) and keeps the number of bytes it returns, which must be in `0...count`.
    /// If `body` throws, nothing is kept. Returns what `body` returned.
    public mutating func receive(
        upTo count: Int, _ body: (UnsafeMutableRawBufferPointer) throws -> Int
    ) rethrows -> Int {
        precondition(count >= 0, "cannot receive a negative number of bytes")
        compact()
        let start = storage.count
        storage.append(contentsOf: repeatElement(0, count: count))
        let written: Int
        do {
            written = try storage.withUnsafeMutableBytes { raw in
                try body(UnsafeMutableRawBufferPointer(rebasing: raw[start...]))
            }
        } catch {
            storage.removeLast(count)
            throw error
        }
        precondition((0...count).contains(written), "receive body reported \(written) bytes for a \(count)-byte space")
        storage.removeLast(count - written)
        return written
    }

    /// The next complete frame; nil when more bytes are needed; or a framing error when the
    /// next header's msg_size is below 16 or above the maximum. After an error the stream cannot
    /// be resynchronised: the reader keeps returning the same error.
    public mutating func nextFrame() -> Result<Frame, FramingError>? {
        let available = storage.count - readIndex
        guard available >= MessageHeader.size else { return nil }
        let header = MessageHeader(decoding: storage[readIndex..<(readIndex + MessageHeader.size)])!
        let size = Int(header.messageSize)
        if size < MessageHeader.size {
            return .failure(
                FramingError(
                    header: header, errno: WireErrno.EINVAL,
                    reason: "msg_size \(size) is smaller than the \(MessageHeader.size)-byte header"))
        }
        if size > maximumMessageSize {
            return .failure(
                FramingError(
                    header: header, errno: WireErrno.EMSGSIZE,
                    reason: "msg_size \(size) exceeds the maximum of \(maximumMessageSize)"))
        }
        guard available >= size else { return nil }
        let payload = storage[(readIndex + MessageHeader.size)..<(readIndex + size)]
        readIndex += size
        return .success(Frame(header: header, payload: payload))
    }

    /// Drops consumed bytes. Done only when bytes arrive, never in `nextFrame`, so all the frames
    /// cut from one read share the buffer. A frame still held when bytes arrive costs one copy
    /// of the buffer (copy-on-write), never a wrong payload.
    private mutating func compact() {
        guard readIndex > 0 else { return }
        if readIndex == storage.count {
            storage.removeAll(keepingCapacity: true)
        } else {
            storage.removeSubrange(0..<readIndex)
        }
        readIndex = 0
    }
}
