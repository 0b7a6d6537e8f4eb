import IOMMUCore
import Logging

/// The kinds of audit record. Each becomes one log record with stable metadata; the journal
/// handler gives each its own MESSAGE_ID.
public struct AuditEvent: Hashable, Sendable, CustomStringConvertible {
    public let name: String
    public init(_ name: String) { self.name = name }
    public var description: String { name }

    public static let sessionOpened = AuditEvent("session-opened")
    public static let sessionRefused = AuditEvent("session-refused")
    public static let sessionClosed = AuditEvent("session-closed")
    public static let versionNegotiated = AuditEvent("version-negotiated")
    public static let attachAllowed = AuditEvent("attach-allowed")
    public static let attachDenied = AuditEvent("attach-denied")
    public static let mapAllowed = AuditEvent("map-allowed")
    public static let mapDenied = AuditEvent("map-denied")
    public static let unmapAllowed = AuditEvent("unmap-allowed")
    public static let unmapDenied = AuditEvent("unmap-denied")
    public static let explained = AuditEvent("explain")
    public static let protocolError = AuditEvent("protocol-error")
    public static let mappingRevoked = AuditEvent("mapping-revoked")
    public static let policyReloaded = AuditEvent("policy-reloaded")
    public static let reloadFailed = AuditEvent("reload-failed")
    public static let regionAdded = AuditEvent("region-added")
    public static let regionRemoved = AuditEvent("region-removed")
    public static let adminOpened = AuditEvent("admin-opened")
    public static let adminRefused = AuditEvent("admin-refused")
    public static let adminClosed = AuditEvent("admin-closed")
    public static let deviceGiven = AuditEvent("device-given")
    public static let deviceDenied = AuditEvent("device-denied")

    /// Every event kind, with its journal MESSAGE_ID: stable 128-bit ids (never change one;
    /// systemd/catalog/iommu-policyd.catalog explains each).
    public static let messageIDs: [AuditEvent: String] = [
        .sessionOpened: "4f711c702f554d19886bf8f095100e3c",
        .sessionRefused: "2ee4f19cacf24db9a996ffb0d6b79212",
        .sessionClosed: "ba53dc94df734496983334b9dd8c3d72",
        .versionNegotiated: "48bec483298d41bebf6d3fedadd6150b",
        .attachAllowed: "a2a460430ed94ad487dbcb78394f2db1",
        .attachDenied: "8e97f27cb83d480f844ca31012652df3",
        .mapAllowed: "cf79cac2d142464a84fd184a72ef1cec",
        .mapDenied: "92090363d1db4fb0b7263094bc97804f",
        .unmapAllowed: "7d128bdc4d864ef6a2ccae580bb27ecd",
        .unmapDenied: "30c6125eb4484683acea414d3a10d6dc",
        .explained: "e2f89bebff76436ab34a4140f7b27f3d",
        .protocolError: "adeff1aad2b34632b752bca385c3d926",
        .mappingRevoked: "e5e6007faa76403fb93e28177af77efd",
        .policyReloaded: "b498e1b9a50f4b5f991b6f7fa488567d",
        .reloadFailed: "1b08d329f21940d090661476c7f70730",
        .regionAdded: "43a94f832546487cb380f33787434e2b",
        .regionRemoved: "c35f351b82044e9eb647e5f465b0751d",
        .adminOpened: "14171b346e13420ba0695df8cb572700",
        .adminRefused: "48248025131b4821bdb5fffb66c8aa71",
        .adminClosed: "fb9dd566fdae417bbe694c6fd1288c95",
        .deviceGiven: "6b6ca3d1e8a54bd6a3e1b5f1d02c7a41",
        .deviceDenied: "d3f6c0e2a9b84f0e8c1d7a5b4e3f2a19",
    ]

    public var messageID: String? { Self.messageIDs[self] }
}

/// Metadata keys of audit records: dotted and stable, so the journal fields derived from them
/// (`TENANT_UID`, `DMA_IOVA`, …) are stable too.
public enum AuditKey {
    public static let event = "audit.event"
    public static let session = "session.id"
    public static let uid = "tenant.uid"
    public static let gid = "tenant.gid"
    public static let pid = "tenant.pid"
    public static let group = "iommu.group"
    public static let iova = "dma.iova"
    public static let size = "dma.size"
    public static let flags = "dma.flags"
    public static let bytes = "dma.bytes"
    public static let decision = "decision"
    public static let errno = "errno"
    public static let reason = "reason"
    public static let regionKind = "region.kind"
    public static let regionSource = "region.source"
    public static let command = "vfio_user.command"
}

/// Writes audit records through swift-log.
public struct Audit: Sendable {
    public let logger: Logger

    public init(logger: Logger) {
        self.logger = logger
    }

    /// Writes one record. CODE_FILE, CODE_LINE and CODE_FUNC name the caller, where the
    /// decision was made, not this function.
    ///
    /// The message and metadata are built only when the level is logged: a daemon run at
    /// `warning` does not pay for the per-mapping records it drops.
    public func record(
        _ event: AuditEvent, _ message: @autoclosure () -> String, level: Logger.Level = .info,
        metadata: @autoclosure () -> Logger.Metadata = [:], file: String = #fileID, function: String = #function,
        line: UInt = #line
    ) {
        guard logger.logLevel <= level else { return }
        var fields = metadata()
        fields[AuditKey.event] = .string(event.name)
        logger.log(level: level, "\(message())", metadata: fields, file: file, function: function, line: line)
    }

    /// The fields that describe a decision: allowed, or denied with its errno, reason and conflict.
    public static func decisionMetadata(_ denial: Denial?) -> Logger.Metadata {
        guard let denial else {
            return [AuditKey.decision: "allow", AuditKey.errno: "0"]
        }
        var metadata: Logger.Metadata = [
            AuditKey.decision: "deny", AuditKey.errno: .string(String(denial.errno.rawValue)),
            AuditKey.reason: .string(denial.reason),
        ]
        if let conflict = denial.conflict {
            metadata[AuditKey.regionKind] = .string(conflict.kind)
            metadata[AuditKey.regionSource] = .string(conflict.source)
        }
        return metadata
    }

    /// An audit record's fields as admin event data: the same keys with `-` for `.` and `_`
    /// (`tenant.uid` is `tenant-uid`), numbers as numbers, in key order.
    public static func eventData(_ metadata: Logger.Metadata) -> [(key: String, value: EventField)] {
        metadata.sorted { $0.key < $1.key }.map { key, value in
            let name = String(key.map { $0 == "." || $0 == "_" ? "-" : $0 })
            let text = "\(value)"
            if numericKeys.contains(key), let number = Int64(text) { return (name, .int(number)) }
            return (name, .string(text))
        }
    }

    static let numericKeys: Set<String> = [
        AuditKey.session, AuditKey.uid, AuditKey.gid, AuditKey.pid, AuditKey.errno, AuditKey.flags,
    ]
}
