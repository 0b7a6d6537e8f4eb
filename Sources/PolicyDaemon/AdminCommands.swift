import DaemonMetrics
import Foundation
import IOMMUCore
import PlatformDiscovery
import QMPWire
import SystemPackage
import UnixSockets

/// One admin command: the arguments it takes and what it does. docs/ADMIN.md documents each.
struct AdminCommand: Sendable {
    var arguments: [String]
    /// Throws a `QMPError`; anything else becomes a GenericError with its description.
    var run: @Sendable (AdminConnection, QMPArguments) throws -> QMPValue
}

enum AdminCommands {
    static let table: [String: AdminCommand] = [
        "query-commands": AdminCommand(arguments: []) { _, _ in
            .array((["qmp_capabilities"] + table.keys.sorted()).map { ["name": .string($0)] })
        },
        "query-version": AdminCommand(arguments: []) { connection, _ in
            let version = connection.server.version
            return [
                "qemu": [
                    "major": .int(Int64(version.major)), "minor": .int(Int64(version.minor)),
                    "micro": .int(Int64(version.micro)),
                ],
                "package": .string("iommu-policyd \(version.major).\(version.minor).\(version.micro)"),
            ]
        },
        "query-platform": AdminCommand(arguments: [], run: queryPlatform),
        "query-reserved-regions": AdminCommand(arguments: ["group"], run: queryReservedRegions),
        "query-usable-ranges": AdminCommand(arguments: ["groups", "relaxable"], run: queryUsableRanges),
        "query-tenants": AdminCommand(arguments: [], run: queryTenants),
        "query-mappings": AdminCommand(arguments: ["tenant", "group", "offset", "limit"], run: queryMappings),
        "explain-map": AdminCommand(arguments: ["group", "iova", "size", "flags", "uid"], run: explainMap),
        "add-reserved-region": AdminCommand(
            arguments: ["first", "last", "size", "kind", "group", "comment", "persist"], run: addReservedRegion),
        "remove-reserved-region": AdminCommand(arguments: ["id"]) { connection, arguments in
            switch connection.control.removeRegion(id: try arguments.uint64("id")) {
            case .success: return [:]
            case .failure(let error): throw QMPError.generic(error.description)
            }
        },
        "revoke-tenant": AdminCommand(arguments: ["session", "reason"]) { connection, arguments in
            let session = SessionID(rawValue: try arguments.uint64("session"))
            let reason =
                try arguments.optionalString("reason") ?? "revoked by admin connection \(connection.id)"
            switch connection.control.revokeTenant(session, reason: reason) {
            case .success(let count): return ["revoked": .int(Int64(count))]
            case .failure(let error): throw QMPError.generic(error.description)
            }
        },
        "reload": AdminCommand(arguments: []) { connection, _ in
            switch connection.control.reload(trigger: "admin connection \(connection.id)") {
            case .success(let change):
                return [
                    "revoked": .int(Int64(change.revoked.count)),
                    "sessions-ended": .int(Int64(change.endedSessions.count)),
                    "diagnostics": .array(change.diagnostics.map { .string($0.description) }),
                ]
            case .failure(let error): throw QMPError.generic(error.description)
            }
        },
        "query-stats": AdminCommand(arguments: [], run: queryStats),
        "query-metrics": AdminCommand(arguments: []) { connection, _ in
            ["text": .string(connection.control.environment.metrics.prometheusText())]
        },
        "getfd": AdminCommand(arguments: ["fdname"]) { connection, arguments in
            let name = try arguments.string("fdname")
            guard !name.isEmpty, !name.first!.isNumber else {
                throw QMPError.generic("Parameter 'fdname' must be a name that does not start with a digit")
            }
            guard let fd = connection.takeQueuedFD() else {
                throw QMPError.generic("No file descriptor supplied via SCM_RIGHTS")
            }
            if let old = connection.namedFDs.updateValue(fd, forKey: name) { try? old.close() }
            return [:]
        },
        "closefd": AdminCommand(arguments: ["fdname"]) { connection, arguments in
            let name = try arguments.string("fdname")
            guard let fd = connection.namedFDs.removeValue(forKey: name) else {
                throw QMPError.generic("File descriptor named '\(name)' not found")
            }
            try? fd.close()
            return [:]
        },
        "add-client": AdminCommand(arguments: ["fdname", "protocol"]) { connection, arguments in
            let name = try arguments.string("fdname")
            let proto = try arguments.optionalString("protocol") ?? "vfio-user"
            guard proto == "vfio-user" else { throw QMPError.generic("Parameter 'protocol' must be \"vfio-user\"") }
            guard let fd = connection.namedFDs[name] else {
                throw QMPError.generic("File descriptor named '\(name)' not found")
            }
            let socket = UnixSocket(fd: fd)
            guard (try? socket.peerCredentials()) != nil else {
                throw QMPError.generic("the fd named '\(name)' is not a connected Unix stream socket")
            }
            connection.namedFDs[name] = nil
            guard let session = connection.server.tenants.adopt(socket) else {
                throw QMPError.generic("the tenant server is stopping")
            }
            return ["session": .uint(session.rawValue)]
        },
    ]

    // MARK: Queries

    static func queryPlatform(_ connection: AdminConnection, _: QMPArguments) -> QMPValue {
        let control = connection.control
        let sources = control.sources
        let database = control.environment.store.current.database
        let groups: [QMPValue] = database.groupIDs.compactMap { id in
            guard let group = database.groups[id] else { return nil }
            return [
                "id": .uint(UInt64(id)), "aperture": range(group.aperture),
                "aperture-source": .string(group.apertureSource), "page-sizes": .uint(group.pageSizes),
                "devices": .array(group.devices.map { .string($0) }),
            ]
        }
        return [
            "sources": .array(sources.sources.map { .string($0) }),
            "diagnostics": .array(sources.diagnostics.map(diagnostic)),
            "groups": .array(groups),
            "reloads": .int(Int64(sources.reloads)),
            "runtime-regions": .array(
                control.runtimeRegions.map { runtime in
                    var object = region(runtime.region)
                    object["id"] = .uint(runtime.id)
                    object["persistent"] = .bool(runtime.persistent)
                    return .object(object)
                }),
        ]
    }

    static func queryReservedRegions(_ connection: AdminConnection, _ arguments: QMPArguments) throws(QMPError)
        -> QMPValue
    {
        let database = connection.control.environment.store.current.database
        let regions: [ReservedRegion]
        if let group = try arguments.optionalUInt32("group") {
            guard let found = database.regions(group: group) else { throw QMPError.generic("no IOMMU group \(group)") }
            regions = found
        } else {
            regions = database.allRegions
        }
        return .array(regions.map { .object(region($0)) })
    }

    static func queryUsableRanges(_ connection: AdminConnection, _ arguments: QMPArguments) throws(QMPError)
        -> QMPValue
    {
        let snapshot = connection.control.environment.store.current
        let groups = try arguments.uint32Array("groups")
        guard !groups.isEmpty else { throw QMPError.generic("Parameter 'groups' must name at least one group") }
        for group in groups where snapshot.database.groups[group] == nil {
            throw QMPError.generic("no IOMMU group \(group)")
        }
        let relaxable: RelaxablePolicy
        if let name = try arguments.optionalString("relaxable") {
            guard let parsed = RelaxablePolicy(rawValue: name) else {
                throw QMPError.generic("Parameter 'relaxable' must be \"deny\" or \"allow\"")
            }
            relaxable = parsed
        } else {
            relaxable = snapshot.config.defaults.relaxable
        }
        return .array(snapshot.database.usableRanges(groups: groups, relaxable: relaxable).map(range))
    }

    static func queryTenants(_ connection: AdminConnection, _: QMPArguments) -> QMPValue {
        .array(
            connection.control.sessions.map { summary in
                [
                    "session": .uint(summary.id.rawValue), "uid": .uint(UInt64(summary.credentials.uid)),
                    "gid": .uint(UInt64(summary.credentials.gid)), "pid": .int(Int64(summary.credentials.pid)),
                    "rule": .string(summary.origin ?? ""), "groups": .array(summary.groups.map { .uint(UInt64($0)) }),
                    "mappings": .int(Int64(summary.mappingCount)), "bytes": .uint(summary.mappedBytes),
                    "connected-at": .int(Int64(summary.openedAt.timeIntervalSince1970)),
                ]
            })
    }

    static let defaultMappingLimit = 1000
    static let maximumMappingLimit = 100_000

    static func queryMappings(_ connection: AdminConnection, _ arguments: QMPArguments) throws(QMPError) -> QMPValue {
        let offset = try arguments.optionalInt("offset") ?? 0
        let limit = try arguments.optionalInt("limit") ?? defaultMappingLimit
        guard offset >= 0 else { throw QMPError.generic("Parameter 'offset' must not be negative") }
        guard limit >= 0, limit <= maximumMappingLimit else {
            throw QMPError.generic("Parameter 'limit' must be from 0 to \(maximumMappingLimit)")
        }
        let control = connection.control
        let tenant = try arguments.optionalUInt64("tenant")
        let group = try arguments.optionalUInt32("group")
        guard tenant == nil || group == nil else { throw QMPError.generic("give 'tenant' or 'group', not both") }
        var sessions = control.environment.sessions.tenantSessions
        if let tenant {
            sessions = sessions.filter { $0.id.rawValue == tenant }
            guard !sessions.isEmpty else { throw QMPError.generic("no tenant session \(tenant)") }
        }
        var total = 0
        var page: [QMPValue] = []
        var skip = offset
        for session in sessions {
            if let group, !session.summary().groups.contains(group) { continue }
            let (count, mappings) = session.mappings(offset: skip, limit: limit - page.count)
            total += count
            skip = max(0, skip - count)
            page += mappings.map { mapping in
                [
                    "session": .uint(mapping.session.rawValue), "iova": .uint(mapping.range.first),
                    "size": .uint(mapping.range.sizeMinusOne &+ 1), "flags": .string(flags(mapping.protection)),
                    "backed": .bool(mapping.backed),
                ]
            }
        }
        return ["total": .int(Int64(total)), "mappings": .array(page)]
    }

    static func explainMap(_ connection: AdminConnection, _ arguments: QMPArguments) throws(QMPError) -> QMPValue {
        let environment = connection.control.environment
        let snapshot = environment.store.current
        let group = try arguments.uint32("group")
        let request = MapRequest(
            iova: try arguments.uint64("iova"), size: try arguments.uint64("size"),
            flags: try mapFlags(arguments), offset: 0)
        let tenant: TenantPolicy
        if let uid = try arguments.optionalUInt32("uid") {
            guard let found = snapshot.config.policy(uid: uid, gid: uid, daemonUID: environment.daemonUID) else {
                throw QMPError.generic("no [[tenant]] rule of the policy matches uid \(uid)")
            }
            tenant = found
        } else {
            let defaults = snapshot.config.defaults
            tenant = TenantPolicy(
                groups: .any, maxMappings: defaults.maxMappings, maxBytes: defaults.maxBytes,
                relaxable: defaults.relaxable, maxSessions: defaults.maxSessions, origin: "[defaults]")
        }
        var state = TenantState()
        var denial: Denial?
        switch PolicyEngine.decideAttach(group: group, platform: snapshot.database, tenant: tenant, state: state) {
        case .success(let plan): state.commit(plan)
        case .failure(let refused): denial = refused
        }
        if denial == nil,
            case .failure(let refused) = PolicyEngine.decideMap(
                request, platform: snapshot.database, tenant: tenant, state: state)
        {
            denial = refused
        }
        return QMPValue(DecisionReport.json(denial))
    }

    static func addReservedRegion(_ connection: AdminConnection, _ arguments: QMPArguments) throws(QMPError)
        -> QMPValue
    {
        let first = try arguments.uint64("first")
        let last: UInt64
        switch (try arguments.optionalUInt64("last"), try arguments.optionalUInt64("size")) {
        case (let given?, nil): last = given
        case (nil, let size?):
            guard size > 0, let range = IOVARange(start: first, size: size) else {
                throw QMPError.generic("Parameter 'size' must be positive and first + size must not wrap past 2^64")
            }
            last = range.last
        default: throw QMPError.generic("give 'last' or 'size' (exactly one)")
        }
        guard let range = IOVARange(first: first, last: last) else {
            throw QMPError.generic("'last' \(Hex(last)) is below 'first' \(Hex(first))")
        }
        let kindName = try arguments.optionalString("kind") ?? RegionKind.reserved.rawValue
        guard let kind = RegionKind(rawValue: kindName), kind != .outsideAperture else {
            let kinds = RegionKind.allCases.filter { $0 != .outsideAperture }.map(\.rawValue)
            throw QMPError.generic("Parameter 'kind' must be one of \(kinds.joined(separator: ", "))")
        }
        let outcome = connection.control.addRegion(
            kind: kind, range: range, group: try arguments.optionalUInt32("group"),
            comment: try arguments.optionalString("comment"),
            persistent: try arguments.optionalBool("persist") ?? false,
            connection: connection.id)
        switch outcome {
        case .success(let (added, change)):
            return ["id": .uint(added.id), "revoked": .int(Int64(change.revoked.count))]
        case .failure(let error): throw QMPError.generic(error.description)
        }
    }

    static func queryStats(_ connection: AdminConnection, _: QMPArguments) -> QMPValue {
        let environment = connection.control.environment
        let stats = environment.metrics.snapshot()
        let byReason = QMPObject(stats.deniedByReason.sorted { $0.key < $1.key }.map { ($0.key, .uint($0.value)) })
        return [
            "requests": .uint(stats.requests), "allowed": .uint(stats.allowed), "denied": .uint(stats.denied),
            "denied-by-reason": .object(byReason),
            "sessions": .int(Int64(environment.sessions.tenantSessions.count)),
            "sessions-total": .uint(environment.stats.sessionsTotal.load(ordering: .relaxed)),
            "mappings": .int(Int64(environment.stats.mappingCount)),
            "bytes": .uint(environment.stats.mappedBytes.load(ordering: .relaxed)),
            "events-dropped": .int(Int64(environment.events.droppedCount)),
            "latency-ns": [
                "p50": .uint(stats.latency.p50), "p90": .uint(stats.latency.p90), "p99": .uint(stats.latency.p99),
                "max": .uint(stats.latency.max),
            ],
        ]
    }

    // MARK: Values

    static func range(_ range: IOVARange) -> QMPValue {
        ["first": .uint(range.first), "last": .uint(range.last)]
    }

    static func region(_ region: ReservedRegion) -> QMPObject {
        var object: QMPObject = [
            "kind": .string(region.kind.rawValue), "first": .uint(region.range.first),
            "last": .uint(region.range.last), "source": .string(region.source),
        ]
        if let group = region.group { object["group"] = .uint(UInt64(group)) }
        return object
    }

    static func diagnostic(_ diagnostic: Diagnostic) -> QMPValue {
        var object: QMPObject = [
            "severity": .string(diagnostic.severity.rawValue), "file": .string(diagnostic.file),
            "message": .string(diagnostic.message),
        ]
        if let location = diagnostic.location { object["location"] = .string(location) }
        return .object(object)
    }

    static func flags(_ protection: DMAProtection) -> String {
        (protection.contains(.read) ? "r" : "") + (protection.contains(.write) ? "w" : "")
    }

    /// `"r"`, `"w"`, `"rw"` or the raw VFIO bits; default read and write.
    static func mapFlags(_ arguments: QMPArguments) throws(QMPError) -> UInt32 {
        guard let value = arguments["flags"] else { return DMAProtection.readWrite.rawValue }
        if case .string(let text) = value, !text.isEmpty, text.allSatisfy({ $0 == "r" || $0 == "w" }) {
            return (text.contains("r") ? DMAProtection.read.rawValue : 0)
                | (text.contains("w") ? DMAProtection.write.rawValue : 0)
        }
        return try arguments.uint32("flags")
    }
}
