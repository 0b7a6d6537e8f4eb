import ArgumentParser
import Foundation
import IOMMUBackends
import IOMMUCore
import Logging
import PlatformDiscovery
import PolicyCommandLine
import PolicyDaemon
import ServiceLifecycle
import SystemPackage
import SystemdSupport
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

    @Option(
        name: .customLong("log-target"),
        help: """
            auto (the journal when systemd connected stderr to it, per $JOURNAL_STREAM; else stderr), \
            journal, or stderr (<N>-prefixed lines).
            """)
    var logTarget: String = "auto"

    func validate() throws {
        guard logTarget == "auto" || JournalWriter.Destination(rawValue: logTarget) != nil else {
            throw ValidationError("--log-target must be auto, journal or stderr")
        }
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
        let writer = JournalWriter(
            identifier: "iommu-policyd",
            destination: JournalWriter.Destination(rawValue: logTarget) ?? JournalWriter.defaultDestination,
            messageIDKey: AuditKey.event,
            messageIDs: Dictionary(uniqueKeysWithValues: AuditEvent.messageIDs.map { ($0.key.name, $0.value) }))
        LoggingSystem.bootstrap { label in
            var handler = JournalLogHandler(label: label, writer: writer)
            handler.logLevel = level
            return handler
        }
        defer { writer.flush() }
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

        let listener: UnixSocket
        let passed = SocketActivation.passedSockets()
        if passed.isEmpty {
            let path = socket ?? Self.defaultSocketPath()
            do {
                listener = try UnixSocket.listen(path: path, mode: UInt32(socketMode, radix: 8) ?? 0o660)
            } catch {
                throw fatal(logger, "cannot listen on \(path): \(error)")
            }
            logger.notice("serving tenants on \(path)")
        } else {
            // Socket activation: systemd owns the sockets and keeps them across restarts.
            guard let tenant = passed.first(where: { $0.name == "tenant" }) ?? (passed.count == 1 ? passed.first : nil)
            else {
                throw fatal(logger, "socket activation passed \(passed.map(\.name)) but no socket named \"tenant\"")
            }
            guard SocketActivation.isListeningUnixStream(tenant.fd) else {
                throw fatal(
                    logger,
                    "the socket-activated fd \(tenant.fd) (\(tenant.name)) is not a listening Unix stream socket")
            }
            listener = UnixSocket(fd: FileDescriptor(rawValue: tenant.fd))
            for other in passed where other != tenant {
                // The admin socket is served by the admin plane, which is not here yet; keep it
                // open so systemd does not see it closed.
                logger.notice("socket-activated fd \(other.fd) named \"\(other.name)\" is not served yet")
            }
            logger.notice("serving tenants on the socket-activated fd \(tenant.fd) (\(tenant.name))")
        }
        defer {
            // Only a socket we bound is ours to remove.
            if passed.isEmpty { unlink(socket ?? Self.defaultSocketPath()) }
        }
        let hangup = Self.handleHangup(logger)
        defer { hangup.cancel() }
        let server = TenantServer(
            listener: listener, store: PolicyStore(PolicySnapshot(database: loaded.database, config: loaded.config)),
            backend: backend, logger: logger, daemonUID: getuid())
        logger.notice("\(backend.name) backend, \(loaded.database.groups.count) IOMMU group(s)")
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: server)], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
    }

    /// SIGHUP (systemd's ExecReload) must not kill the daemon. Live reload with revalidation
    /// belongs to the admin plane, which is not here yet; until then a reload changes nothing
    /// and says so.
    static func handleHangup(_ logger: Logger) -> any DispatchSourceSignal {
        signal(SIGHUP, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: SIGHUP, queue: .global())
        source.setEventHandler {
            let notifier = SystemdNotifier()
            notifier.reloading()
            logger.notice("SIGHUP: live reload is not available yet; the running policy is unchanged")
            notifier.send("READY=1")
        }
        source.resume()
        return source
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
