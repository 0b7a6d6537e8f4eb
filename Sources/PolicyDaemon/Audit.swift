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
    public static let mappingReleased = AuditEvent("mapping-released")
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

    public func record(
        _ event: AuditEvent, _ message: String, level: Logger.Level = .info, metadata: Logger.Metadata = [:]
    ) {
        var metadata = metadata
        metadata[AuditKey.event] = .string(event.name)
        logger.log(level: level, "\(message)", metadata: metadata)
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
