import ArgumentParser
import Foundation
import IOMMUBackends
import IOMMUCore
import Logging
import PlatformDiscovery
import PolicyCommandLine
import PolicyDaemon
import ServiceLifecycle
import UnixSockets

@main
struct PolicyDaemonCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "iommu-policyd",
        abstract: "Serve untrusted tenants' IOMMU DMA mappings, refusing every map the platform must not allow.",
        discussion: """
            With no arguments it serves ./iommu-policyd.sock (or $RUNTIME_DIRECTORY/iommu-policyd.sock) \
            on the built-in x86-intel profile with the simulated backend.
            """)

    @Option(help: "The tenant socket (default: $RUNTIME_DIRECTORY/iommu-policyd.sock, else ./iommu-policyd.sock).")
    var socket: String?

    @Option(name: .customLong("socket-mode"), help: "The tenant socket's file mode, in octal.")
    var socketMode: String = "0660"

    @OptionGroup var platform: PlatformOptions

    @Option(help: "Where allowed mappings go: simulated.")
    var backend: String = "simulated"

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: String = "info"

    func validate() throws {
        guard Logger.Level(rawValue: logLevel) != nil else {
            let levels = Logger.Level.allCases.map(\.rawValue).joined(separator: ", ")
            throw ValidationError("--log-level must be one of \(levels)")
        }
        guard UInt32(socketMode, radix: 8) != nil else {
            throw ValidationError("--socket-mode must be octal, such as 0660")
        }
    }

    func run() async throws {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "iommu-policyd")

        let source: PlatformSource
        do {
            source = try platform.source(fallback: .profile(.x86Intel, .init()))
        } catch {
            throw fatal(logger, error.description)
        }
        let loaded: LoadedPlatform
        switch PlatformLoader.load(source, configPath: platform.config) {
        case .success(let value): loaded = value
        case .failure(let error):
            for diagnostic in error.diagnostics { logger.error("\(diagnostic)") }
            throw ExitCode(2)
        }
        for line in loaded.sources { logger.info("platform: \(line)") }
        for diagnostic in loaded.diagnostics { logger.warning("\(diagnostic)") }

        let backend: any IOMMUBackend
        switch self.backend {
        case "simulated": backend = SimulatedIOMMU(platform: loaded.database)
        default: throw fatal(logger, "backend \"\(self.backend)\" is not available (available: simulated)")
        }

        let path = socket ?? Self.defaultSocketPath()
        let listener: UnixSocket
        do {
            listener = try UnixSocket.listen(path: path, mode: UInt32(socketMode, radix: 8) ?? 0o660)
        } catch {
            throw fatal(logger, "cannot listen on \(path): \(error)")
        }
        defer { unlink(path) }
        let server = TenantServer(
            listener: listener, store: PolicyStore(PolicySnapshot(database: loaded.database, config: loaded.config)),
            backend: backend, logger: logger, daemonUID: getuid())
        logger.notice(
            "serving tenants on \(path) with the \(backend.name) backend, \(loaded.database.groups.count) IOMMU group(s)"
        )
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: server)], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
    }

    static func defaultSocketPath() -> String {
        if let runtime = ProcessInfo.processInfo.environment["RUNTIME_DIRECTORY"], !runtime.isEmpty {
            // systemd may pass several directories, separated by colons; the first is ours.
            let first = runtime.split(separator: ":").first.map(String.init) ?? runtime
            return first + "/iommu-policyd.sock"
        }
        return "./iommu-policyd.sock"
    }

    private func fatal(_ logger: Logger, _ message: String) -> ExitCode {
        logger.critical("\(message)")
        return ExitCode(2)
    }
}
