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
    public func record(
        _ event: AuditEvent, _ message: String, level: Logger.Level = .info, metadata: Logger.Metadata = [:],
        file: String = #fileID, function: String = #function, line: UInt = #line
    ) {
        var metadata = metadata
        metadata[AuditKey.event] = .string(event.name)
        logger.log(level: level, "\(message)", metadata: metadata, file: file, function: function, line: line)
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
}
