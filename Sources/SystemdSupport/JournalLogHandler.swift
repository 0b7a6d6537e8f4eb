import CSystemd
import Dispatch
import Glibc
import Logging
import Synchronization

/// A swift-log handler that writes structured records to the systemd journal with
/// sd_journal_sendv, or, with no journal, `<N>`-prefixed lines on stderr as systemd expects
/// from `StandardError=journal`.
///
/// Records are queued and written by a thread of their own, so logging never blocks the
/// request path; when the queue is full, records are dropped and the drop is itself logged.
public struct JournalLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .info
    public var metadataProvider: Logger.MetadataProvider?
    private let label: String
    private let writer: JournalWriter

    public init(label: String, writer: JournalWriter) {
        self.label = label
        self.writer = writer
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(
        level: Logger.Level, message: Logger.Message, metadata explicit: Logger.Metadata?, source: String,
        file: String, function: String, line: UInt
    ) {
        var merged = metadata
        if let provided = metadataProvider?.get() { merged.merge(provided) { $1 } }
        if let explicit { merged.merge(explicit) { $1 } }
        writer.enqueue(
            JournalRecord(
                priority: Self.priority(level), message: message.description, metadata: merged, file: file,
                function: function, line: line))
    }

    /// syslog priorities (sd-daemon.h).
    static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: 7
        case .info: 6
        case .notice: 5
        case .warning: 4
        case .error: 3
        case .critical: 2
        }
    }
}

struct JournalRecord: Sendable {
    var priority: Int
    var message: String
    var metadata: Logger.Metadata
    var file: String
    var function: String
    var line: UInt
}

/// The queue and the thread behind `JournalLogHandler`; one per process.
public final class JournalWriter: Sendable {
    public enum Destination: String, Sendable, CaseIterable {
        case journal
        case stderr
    }

    public let destination: Destination
    private let identifier: String
    /// The metadata key whose value picks a MESSAGE_ID, and the ids.
    private let messageIDKey: String?
    private let messageIDs: [String: String]
    private let capacity: Int
    private let state = Mutex(State())
    private let wake = DispatchSemaphore(value: 0)
    private let idle = DispatchSemaphore(value: 0)

    private struct State: ~Copyable {
        var queue: [JournalRecord] = []
        var dropped = 0
        var waitingForIdle = 0
    }

    /// The journal when stderr is connected to it, else stderr: systemd sets `$JOURNAL_STREAM`
    /// to the device and inode of the stream it gives a service (systemd.exec(5)). A daemon run
    /// from a terminal logs to the terminal, even on a machine with a journal.
    public static var defaultDestination: Destination {
        destination(journalStream: getenv("JOURNAL_STREAM").map { String(cString: $0) }, stderr: 2)
    }

    /// `.journal` when `journalStream` ("device:inode") names the file `stderr` is open on.
    static func destination(journalStream: String?, stderr: Int32) -> Destination {
        guard let journalStream else { return .stderr }
        var status = stat()
        guard fstat(stderr, &status) == 0 else { return .stderr }
        return journalStream == "\(status.st_dev):\(status.st_ino)" ? .journal : .stderr
    }

    public init(
        identifier: String, destination: Destination = JournalWriter.defaultDestination,
        messageIDKey: String? = nil, messageIDs: [String: String] = [:], capacity: Int = 65536
    ) {
        self.identifier = identifier
        self.destination = destination
        self.messageIDKey = messageIDKey
        self.messageIDs = messageIDs
        self.capacity = capacity
        // A queue of its own, blocked in `drain` for the life of the process.
        DispatchQueue(label: "iommu-policyd.journal-writer", qos: .utility).async { [self] in drain() }
    }

    func enqueue(_ record: JournalRecord) {
        let queued = state.withLock { state in
            guard state.queue.count < capacity else {
                state.dropped += 1
                return false
            }
            state.queue.append(record)
            return true
        }
        if queued { wake.signal() }
    }

    /// Waits until every record queued so far is written (for shutdown and tests).
    public func flush() {
        let pending = state.withLock { state -> Bool in
            guard !state.queue.isEmpty else { return false }
            state.waitingForIdle += 1
            return true
        }
        if pending {
            wake.signal()
            idle.wait()
        }
    }

    private func drain() {
        while true {
            wake.wait()
            let (batch, dropped) = state.withLock { state in
                let batch = state.queue
                let dropped = state.dropped
                state.queue.removeAll(keepingCapacity: true)
                state.dropped = 0
                return (batch, dropped)
            }
            for record in batch { write(record) }
            if dropped > 0 {
                write(
                    JournalRecord(
                        priority: 4, message: "the log queue was full: \(dropped) record(s) dropped",
                        metadata: ["log.dropped": .string(String(dropped))], file: #fileID, function: #function,
                        line: #line))
            }
            let waiters = state.withLock { state -> Int in
                guard state.queue.isEmpty else { return 0 }
                let waiters = state.waitingForIdle
                state.waitingForIdle = 0
                return waiters
            }
            for _ in 0..<waiters { idle.signal() }
        }
    }

    private func write(_ record: JournalRecord) {
        switch destination {
        case .journal: writeJournal(record)
        case .stderr: writeStderr(record)
        }
    }

    /// Journal field names: upper case letters, digits and underscores, not starting with `_`
    /// or a digit (journal-fields(7)). `tenant.uid` becomes `TENANT_UID`.
    static func fieldName(_ key: String) -> String {
        var name = String(key.uppercased().map { ($0.isASCII && ($0.isLetter || $0.isNumber)) ? $0 : "_" })
        while let first = name.first, first == "_" || first.isNumber { name.removeFirst() }
        return name.isEmpty ? "FIELD" : String(name.prefix(64))
    }

    func fields(_ record: JournalRecord) -> [String] {
        var fields = [
            "MESSAGE=\(record.message)", "PRIORITY=\(record.priority)", "SYSLOG_IDENTIFIER=\(identifier)",
            "CODE_FILE=\(record.file)", "CODE_LINE=\(record.line)", "CODE_FUNC=\(record.function)",
        ]
        if let key = messageIDKey, case .string(let event)? = record.metadata[key], let id = messageIDs[event] {
            fields.append("MESSAGE_ID=\(id)")
        }
        for (key, value) in record.metadata.sorted(by: { $0.key < $1.key }) {
            fields.append("\(Self.fieldName(key))=\(value)")
        }
        return fields
    }

    private func writeJournal(_ record: JournalRecord) {
        var storage: [UInt8] = []
        var bounds: [Range<Int>] = []
        for field in fields(record) {
            let start = storage.count
            storage.append(contentsOf: field.utf8)
            bounds.append(start..<storage.count)
        }
        let result = storage.withUnsafeMutableBytes { raw in
            var vectors = bounds.map { iovec(iov_base: raw.baseAddress! + $0.lowerBound, iov_len: $0.count) }
            return sd_journal_sendv(&vectors, Int32(vectors.count))
        }
        // The journal went away (or was never there): the record goes to stderr rather than
        // nowhere, which under systemd's StandardError=journal still reaches the journal.
        if result < 0 { writeStderr(record) }
    }

    private func writeStderr(_ record: JournalRecord) {
        var line = "<\(record.priority)>\(record.message)"
        for (key, value) in record.metadata.sorted(by: { $0.key < $1.key }) {
            line += " \(key)=\(value)"
        }
        line = String(line.map { $0 == "\n" ? " " : $0 }) + "\n"
        var bytes = Array(line.utf8)
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeMutableBytes { Glibc.write(2, $0.baseAddress! + offset, $0.count - offset) }
            if written < 0 && errno == EINTR { continue }
            guard written > 0 else { return }
            offset += written
        }
    }
}
