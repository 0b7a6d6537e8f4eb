import ArgumentParser
import DaemonMetrics
import Foundation
import IOMMUBackends
import IOMMUCore
import KernelBackends
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

    @Option(
        name: .customLong("admin-socket"),
        help: "The admin socket (QMP, root or the policy's [admin] only); none unless given or socket-activated.")
    var adminSocket: String?

    @Option(
        name: .customLong("admin-socket-mode"),
        help: "The admin socket's file mode, in octal: 0660 lets the socket's group in, for [admin] gids.")
    var adminSocketMode: String = "0600"

    @Option(
        name: .customLong("state-directory"),
        help: "Where persistent runtime regions are kept (default: $STATE_DIRECTORY).")
    var stateDirectory: String? = ProcessInfo.processInfo.environment["STATE_DIRECTORY"].flatMap {
        $0.split(separator: ":").first.map(String.init)
    }

    @Option(
        name: .customLong("metrics-textfile"),
        help: "Write Prometheus metrics to this file every 10 s (for node_exporter's textfile collector).")
    var metricsTextfile: String?

    @Option(
        help: """
            Where allowed mappings go: simulated (the default), vfio (VFIO type1), iommufd, or auto \
            (iommufd if /dev/iommu exists, else vfio if /dev/vfio/vfio exists, else simulated).
            """)
    var backend: String = "simulated"

    /// Where the kernel backends find /dev and /sys: the machine's root.
    var kernelRoot: String { "/" }

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
        guard UInt32(adminSocketMode, radix: 8) != nil else {
            throw ValidationError("--admin-socket-mode must be octal, such as 0600")
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
        do {
            let chosen = try KernelBackendSelection.make(self.backend, root: kernelRoot)
            backend = chosen.backend ?? SimulatedIOMMU(platform: loaded.database)
            logger.notice("backend: \(chosen.why)")
        } catch {
            throw fatal(logger, "--backend \(self.backend): \(error)")
        }

        let passed = SocketActivation.passedSockets()
        let listener: UnixSocket
        var adminListener: UnixSocket?
        if passed.isEmpty {
            let path = socket ?? Self.defaultSocketPath()
            do {
                listener = try UnixSocket.listen(path: path, mode: UInt32(socketMode, radix: 8) ?? 0o660)
            } catch {
                throw fatal(logger, "cannot listen on \(path): \(error)")
            }
            logger.notice("serving tenants on \(path)")
            if let adminSocket {
                do {
                    adminListener = try UnixSocket.listen(
                        path: adminSocket, mode: UInt32(adminSocketMode, radix: 8) ?? 0o600)
                } catch {
                    throw fatal(logger, "cannot listen on \(adminSocket): \(error)")
                }
                logger.notice("serving the admin plane on \(adminSocket)")
            }
        } else {
            // Socket activation: systemd owns the sockets and keeps them across restarts.
            guard let tenant = passed.first(where: { $0.name == "tenant" }) ?? (passed.count == 1 ? passed.first : nil)
            else {
                throw fatal(logger, "socket activation passed \(passed.map(\.name)) but no socket named \"tenant\"")
            }
            for socket in passed where socket == tenant || socket.name == "admin" {
                guard SocketActivation.isListeningUnixStream(socket.fd) else {
                    throw fatal(
                        logger,
                        "the socket-activated fd \(socket.fd) (\(socket.name)) is not a listening Unix stream socket")
                }
            }
            listener = UnixSocket(fd: FileDescriptor(rawValue: tenant.fd))
            logger.notice("serving tenants on the socket-activated fd \(tenant.fd) (\(tenant.name))")
            if let admin = passed.first(where: { $0.name == "admin" && $0 != tenant }) {
                adminListener = UnixSocket(fd: FileDescriptor(rawValue: admin.fd))
                logger.notice("serving the admin plane on the socket-activated fd \(admin.fd) (admin)")
            }
            for other in passed where other != tenant && other.name != "admin" {
                // Kept open, so systemd does not see it closed, but not served.
                logger.warning(
                    "socket-activated fd \(other.fd) named \"\(other.name)\" is not a socket this daemon serves")
            }
        }
        defer {
            // Only sockets we bound are ours to remove.
            if passed.isEmpty {
                unlink(socket ?? Self.defaultSocketPath())
                if let adminSocket { unlink(adminSocket) }
            }
        }

        let environment = SessionEnvironment(
            store: PolicyStore(PolicySnapshot(database: loaded.database, config: loaded.config)), backend: backend,
            logger: logger, daemonUID: getuid(), metrics: DaemonMetrics())
        let configPath = platform.config
        let control = DaemonControl(
            environment: environment, initial: loaded,
            loader: { PlatformLoader.load(source, configPath: configPath) },
            stateFile: stateDirectory.map { $0 + "/runtime-regions.json" }, logger: logger)
        for problem in control.loadPersistentRegions() { logger.warning("\(problem)") }
        let hangup = Self.handleHangup(control, logger)
        defer { hangup.cancel() }
        let server = TenantServer(listener: listener, environment: environment, logger: logger)
        let admin = adminListener.map {
            AdminServer(listener: $0, control: control, tenants: server, logger: logger, version: Self.version)
        }
        // The admin socket accepts before READY=1, which the tenant server sends.
        admin?.start()
        defer { admin?.stop() }
        let exporter = TextfileExporter(metrics: environment.metrics)
        if let metricsTextfile {
            do {
                try exporter.start(path: metricsTextfile) { error in logger.warning("metrics textfile: \(error)") }
            } catch {
                throw fatal(logger, "--metrics-textfile: \(error)")
            }
        }
        defer { try? exporter.stop() }

        logger.notice("\(backend.name) backend, \(loaded.database.groups.count) IOMMU group(s)")
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: server)], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
    }

    /// The daemon's version, as the admin greeting and `package` report it.
    static let version = (major: 0, minor: 1, micro: 0)

    /// SIGHUP (systemd's ExecReload): reload with revalidation, reported to systemd.
    static func handleHangup(_ control: DaemonControl, _ logger: Logger) -> any DispatchSourceSignal {
        signal(SIGHUP, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: SIGHUP, queue: .global())
        source.setEventHandler {
            let notifier = SystemdNotifier()
            notifier.reloading()
            if case .failure(let error) = control.reload(trigger: "SIGHUP") {
                logger.error("SIGHUP: \(error)")
            }
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
