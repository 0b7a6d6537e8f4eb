import Foundation
import TestSupport

/// The repository's systemd files, and the real systemd tools that check them.
enum SystemdFiles {
    /// The repository root: this file is Tests/SystemdUnitTests/SystemdFiles.swift.
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    static let directory = repository.appendingPathComponent("systemd")
    static let units = ["iommu-policyd.service", "iommu-policyd.socket", "iommu-policyd-admin.socket"]
    static let catalog = directory.appendingPathComponent("catalog/iommu-policyd.catalog")

    /// Every audit event's journal MESSAGE_ID, written out here so that changing one in
    /// PolicyDaemon's `AuditEvent.messageIDs` fails a test: they are fixed forever.
    static let messageIDs: [String: String] = [
        "session-opened": "4f711c702f554d19886bf8f095100e3c",
        "session-refused": "2ee4f19cacf24db9a996ffb0d6b79212",
        "session-closed": "ba53dc94df734496983334b9dd8c3d72",
        "version-negotiated": "48bec483298d41bebf6d3fedadd6150b",
        "attach-allowed": "a2a460430ed94ad487dbcb78394f2db1",
        "attach-denied": "8e97f27cb83d480f844ca31012652df3",
        "map-allowed": "cf79cac2d142464a84fd184a72ef1cec",
        "map-denied": "92090363d1db4fb0b7263094bc97804f",
        "unmap-allowed": "7d128bdc4d864ef6a2ccae580bb27ecd",
        "unmap-denied": "30c6125eb4484683acea414d3a10d6dc",
        "explain": "e2f89bebff76436ab34a4140f7b27f3d",
        "protocol-error": "adeff1aad2b34632b752bca385c3d926",
        "mapping-revoked": "e5e6007faa76403fb93e28177af77efd",
        "policy-reloaded": "b498e1b9a50f4b5f991b6f7fa488567d",
        "reload-failed": "1b08d329f21940d090661476c7f70730",
        "region-added": "43a94f832546487cb380f33787434e2b",
        "region-removed": "c35f351b82044e9eb647e5f465b0751d",
        "admin-opened": "14171b346e13420ba0695df8cb572700",
        "admin-refused": "48248025131b4821bdb5fffb66c8aa71",
        "admin-closed": "fb9dd566fdae417bbe694c6fd1288c95",
        "device-given": "6b6ca3d1e8a54bd6a3e1b5f1d02c7a41",
        "device-denied": "d3f6c0e2a9b84f0e8c1d7a5b4e3f2a19",
    ]

    static func text(_ relative: String) throws -> String {
        try String(contentsOf: directory.appendingPathComponent(relative), encoding: .utf8)
    }

    /// Copies the units into `root`/units, substituting the placeholders as `make install` does,
    /// with `binDirectory` as @BINDIR@; returns their paths.
    static func installUnits(into root: TemporaryDirectory, binDirectory: String) throws -> [String] {
        try units.map { unit in
            let text = try Self.text(unit).replacingOccurrences(of: "@BINDIR@", with: binDirectory)
                .replacingOccurrences(of: "@SYSCONFDIR@", with: "/etc")
            return try root.write("units/\(unit)", text)
        }
    }

    /// SwiftPM's build directory, which holds the iommu-policyd and iommu-policyctl this test
    /// target depends on.
    static func binaries() throws -> String {
        for name in ["iommu-policyd", "iommu-policyctl"] {
            let path = buildDirectory.appendingPathComponent(name).path
            guard FileManager.default.isExecutableFile(atPath: path) else {
                throw CocoaError(.fileNoSuchFile, userInfo: [NSFilePathErrorKey: path])
            }
        }
        return buildDirectory.path
    }
}

/// The systemd tools, found where Debian puts them or on PATH; nil when not installed.
enum Tools {
    static let systemdAnalyze = find("systemd-analyze")
    static let journalctl = find("journalctl")
    static let sysusers = find("systemd-sysusers")
    static let tmpfiles = find("systemd-tmpfiles")
    static let make = find("make")

    static func find(_ name: String) -> String? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
        let directories = path.split(separator: ":").map(String.init) + ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
        return directories.map { "\($0)/\(name)" }.first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    /// Runs a tool that `.enabled(if:)` has already found.
    static func run(_ tool: String?, _ arguments: [String]) throws -> ProcessOutcome {
        guard let tool else { throw MissingTool() }
        return try runProcess(tool, arguments)
    }

    struct MissingTool: Error {}
}
