import Foundation
import TestSupport
import Testing

/// `make install` into a temporary DESTDIR, and the installed files checked by the real tools
/// as if that directory were the machine's root.
@Suite(.enabled(if: Tools.systemdAnalyze != nil, "systemd-analyze is not installed: the installation is not checked"))
struct InstallTests {
    static let installed = [
        "usr/bin/iommu-policyd", "usr/bin/iommu-policyctl",
        "usr/lib/systemd/system/iommu-policyd.service", "usr/lib/systemd/system/iommu-policyd.socket",
        "usr/lib/systemd/system/iommu-policyd-admin.socket",
        "usr/lib/sysusers.d/iommu-policyd.conf", "usr/lib/tmpfiles.d/iommu-policyd.conf",
        "usr/lib/systemd/catalog/iommu-policyd.catalog",
        "usr/share/doc/iommu-policyd/README.md", "usr/share/doc/iommu-policyd/PROTOCOL.md",
        "usr/share/doc/iommu-policyd/ADMIN.md",
        "etc/iommu-policyd/policy.toml",
    ]

    /// Runs `make install DESTDIR=… PREFIX=/usr` with the binaries SwiftPM already built
    /// (BINDIR_SOURCE), so the test does not wait minutes for a release build.
    static func install(into destdir: TemporaryDirectory, scratch: TemporaryDirectory) throws -> ProcessOutcome {
        let binaries = try SystemdFiles.binaries()
        // Under `make test` the outer make's MAKEFLAGS would carry its command-line variables in.
        return try Tools.run(
            "/usr/bin/env",
            [
                "-u", "MAKEFLAGS", "-u", "MFLAGS", "-u", "MAKELEVEL", Tools.make ?? "make", "--no-print-directory",
                "-C", SystemdFiles.repository.path, "install", "DESTDIR=\(destdir.path)", "PREFIX=/usr",
                "BINDIR_SOURCE=\(binaries)",
            ])
    }

    @Test(.enabled(if: Tools.make != nil, "make is not installed"))
    func makeInstallLaysOutTheFilesAndVerifyAcceptsThemUnderThatRoot() throws {
        let destdir = try TemporaryDirectory(prefix: "destdir")
        let scratch = try TemporaryDirectory(prefix: "install-scratch")
        let outcome = try Self.install(into: destdir, scratch: scratch)
        try #require(outcome.status == 0, "make install failed:\n\(outcome.stdout)\n\(outcome.stderr)")

        let files = FileManager.default
        for path in Self.installed {
            #expect(files.fileExists(atPath: "\(destdir.path)/\(path)"), "make install did not install \(path)")
        }
        for binary in ["iommu-policyd", "iommu-policyctl"] {
            #expect(files.isExecutableFile(atPath: "\(destdir.path)/usr/bin/\(binary)"))
        }
        let service = try String(
            contentsOfFile: "\(destdir.path)/usr/lib/systemd/system/iommu-policyd.service", encoding: .utf8)
        #expect(
            service.contains(
                "\nExecStart=/usr/bin/iommu-policyd --sysfs-root / --config /etc/iommu-policyd/policy.toml\n"))
        for path in Self.installed where path.contains("/systemd/") {
            let text = try String(contentsOfFile: "\(destdir.path)/\(path)", encoding: .utf8)
            for placeholder in ["@BINDIR@", "@SYSCONFDIR@", "@DOCDIR@"] {
                #expect(!text.contains(placeholder), "\(path) still holds \(placeholder)")
            }
        }
        let policy = try String(contentsOfFile: "\(destdir.path)/etc/iommu-policyd/policy.toml", encoding: .utf8)
        let source = try String(
            contentsOf: SystemdFiles.repository.appendingPathComponent("Config/policy.toml"), encoding: .utf8)
        #expect(policy == source)

        // `verify --root` resolves units by name and checks every Exec line's command inside
        // the root, so the root needs what the machine would provide: the standard targets the
        // units depend on by default (sysinit.target, sockets.target, …), /bin/kill and
        // systemd-tmpfiles.
        try Self.addHostPieces(to: destdir.path)
        let verify = try Tools.run(
            Tools.systemdAnalyze, ["verify", "--root=\(destdir.path)"] + SystemdFiles.units)
        #expect(verify.status == 0, "systemd-analyze verify --root exited \(verify.status):\n\(verify.stderr)")
        #expect(verify.stderr.isEmpty, "systemd-analyze verify --root said:\n\(verify.stderr)")
    }

    static func addHostPieces(to root: String) throws {
        let files = FileManager.default
        let host = "/usr/lib/systemd/system"
        for name in try files.contentsOfDirectory(atPath: host) where name.hasSuffix(".target") {
            let copy = "\(root)\(host)/\(name)"
            if !files.fileExists(atPath: copy) { try files.copyItem(atPath: "\(host)/\(name)", toPath: copy) }
        }
        // Debian 12 has a merged /usr: /bin is a link to usr/bin.
        if !files.fileExists(atPath: "\(root)/bin") {
            try files.createSymbolicLink(atPath: "\(root)/bin", withDestinationPath: "usr/bin")
        }
        for tool in ["kill", "systemd-tmpfiles"] {
            guard let path = Tools.find(tool), !files.fileExists(atPath: "\(root)/usr/bin/\(tool)") else { continue }
            try files.copyItem(atPath: path, toPath: "\(root)/usr/bin/\(tool)")
        }
    }

    @Test(
        .enabled(if: Tools.sysusers != nil && Tools.tmpfiles != nil, "systemd-sysusers or systemd-tmpfiles is missing"))
    func sysusersAndTmpfilesMakeTheUsersGroupsAndRuntimeDirectoryUnderARoot() throws {
        let root = try TemporaryDirectory(prefix: "sysusers-root")
        try root.write("usr/lib/sysusers.d/iommu-policyd.conf", try SystemdFiles.text("sysusers.d/iommu-policyd.conf"))
        try root.write("usr/lib/tmpfiles.d/iommu-policyd.conf", try SystemdFiles.text("tmpfiles.d/iommu-policyd.conf"))
        // sysusers writes etc/passwd and etc/group below the root, but does not make etc.
        try FileManager.default.createDirectory(atPath: "\(root.path)/etc", withIntermediateDirectories: true)
        let sysusers = try Tools.run(Tools.sysusers, ["--root=\(root.path)"])
        try #require(sysusers.status == 0, "systemd-sysusers failed:\n\(sysusers.stderr)")

        // passwd: name:x:uid:gid:gecos:home:shell; group: name:x:gid:members.
        let passwd = try String(contentsOfFile: "\(root.path)/etc/passwd", encoding: .utf8)
        let group = try String(contentsOfFile: "\(root.path)/etc/group", encoding: .utf8)
        let user = try #require(
            passwd.split(separator: "\n").map { $0.split(separator: ":", omittingEmptySubsequences: false) }
                .first { $0.first == "iommu-policyd" }, "no iommu-policyd user in:\n\(passwd)")
        let groups = Dictionary(
            group.split(separator: "\n").map { $0.split(separator: ":", omittingEmptySubsequences: false) }
                .map { (String($0[0]), String($0[2])) }, uniquingKeysWith: { first, _ in first })
        #expect(groups["iommu-policyd"] == String(user[3]), "the user's primary group is iommu-policyd")
        #expect(groups["iommu-tenants"] != nil, "no iommu-tenants group in:\n\(group)")
        #expect(user[6].hasSuffix("nologin"))
        // The names the units use are the ones sysusers made.
        let service = try SystemdFiles.text("iommu-policyd.service")
        #expect(service.contains("\nUser=iommu-policyd\n") && service.contains("\nGroup=iommu-policyd\n"))
        #expect(try SystemdFiles.text("iommu-policyd.socket").contains("\nSocketGroup=iommu-tenants\n"))

        let tmpfiles = try Tools.run(Tools.tmpfiles, ["--root=\(root.path)", "--create"])
        #expect(tmpfiles.status == 0, "systemd-tmpfiles failed:\n\(tmpfiles.stderr)")
        #expect(tmpfiles.stderr.isEmpty, "systemd-tmpfiles said:\n\(tmpfiles.stderr)")
        let attributes = try FileManager.default.attributesOfItem(atPath: "\(root.path)/run/iommu-policyd")
        #expect(attributes[.type] as? FileAttributeType == .typeDirectory)
        #expect((attributes[.posixPermissions] as? NSNumber)?.intValue == 0o755)
        // As RuntimeDirectory= leaves it, so that the two never fight over it.
        #expect((attributes[.ownerAccountID] as? NSNumber)?.stringValue == String(user[2]))
        #expect((attributes[.groupOwnerAccountID] as? NSNumber)?.stringValue == String(user[3]))
    }
}
