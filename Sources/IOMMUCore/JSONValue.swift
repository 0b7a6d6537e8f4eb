/// A JSON value that renders itself, for the replies the core's values turn into (the CLI's
/// `--json`, the wire's EXPLAIN and QUERY_RANGES). Rendering only: parsing belongs to the edges.
/// Objects keep their key order so output is stable.
public enum JSONValue: Equatable, Sendable {
    case null
    case bool(Bool)
    case int(Int64)
    /// Addresses and sizes: exact 64-bit integers, never rounded through a double.
    case uint(UInt64)
    case string(String)
    case array([JSONValue])
    case object([(String, JSONValue)])

    /// Equal when they render the same (object key order counts).
    public static func == (lhs: JSONValue, rhs: JSONValue) -> Bool { lhs.rendered == rhs.rendered }

    public var rendered: String {
        var out = ""
        render(into: &out)
        return out
    }

    public func render(into out: inout String) {
        switch self {
        case .null: out += "null"
        case .bool(let value): out += value ? "true" : "false"
        case .int(let value): out += String(value)
        case .uint(let value): out += String(value)
        case .string(let value): Self.renderString(value, into: &out)
        case .array(let values):
            out += "["
            for (index, value) in values.enumerated() {
                if index > 0 { out += "," }
                value.render(into: &out)
            }
            out += "]"
        case .object(let members):
            out += "{"
            for (index, (key, value)) in members.enumerated() {
                if index > 0 { out += "," }
                Self.renderString(key, into: &out)
                out += ":"
                value.render(into: &out)
            }
            out += "}"
        }
    }

    /// RFC 8259 section 7: quote, backslash and control characters are escaped.
    private static func renderString(_ value: String, into out: inout String) {
        out += "\""
        for scalar in value.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case let c where c.value < 0x20:
                let digits = String(c.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - digits.count) + digits
            default: out.unicodeScalars.append(scalar)
            }
        }
        out += "\""
    }
}

extension Conflict {
    /// `{"kind": …, "first": …, "last": …, "source": …}`
    public var json: JSONValue {
        .object([
            ("kind", .string(kind)), ("first", .uint(range.first)), ("last", .uint(range.last)),
            ("source", .string(source)),
        ])
    }
}

extension ReservedRegion {
    public var json: JSONValue {
        var members: [(String, JSONValue)] = [
            ("kind", .string(kind.rawValue)), ("first", .uint(range.first)), ("last", .uint(range.last)),
            ("source", .string(source)),
        ]
        members.append(("group", group.map { .uint(UInt64($0)) } ?? .null))
        return .object(members)
    }
}

/// The outcome of a decision as the CLI's `check --json` and the wire's EXPLAIN report it:
/// `{"decision": "allow"|"deny", "errno": n, "reason": text, "conflict": {…}|null}`.
public enum DecisionReport {
    public static func json(_ denial: Denial?) -> JSONValue {
        guard let denial else {
            return .object([
                ("decision", .string("allow")), ("errno", .int(0)), ("reason", .string("allowed")), ("conflict", .null),
            ])
        }
        return .object([
            ("decision", .string("deny")), ("errno", .int(Int64(denial.errno.rawValue))),
            ("reason", .string(denial.reason)),
            ("conflict", denial.conflict?.json ?? .null),
        ])
    }
}

/// What a tenant attached to `groups` may map, as QUERY_RANGES reports it:
/// `{"aperture":[first,last],"pgsizes":n,"usable":[[first,last],…],"reserved":[{kind,first,last,source},…]}`.
/// With no group, `aperture` is null and the lists are empty.
public enum RangesReport {
    public static func json(groups: [UInt32], database: PlatformDatabase, relaxable: RelaxablePolicy) -> JSONValue {
        let known = groups.compactMap { database.groups[$0] }
        guard !known.isEmpty, known.count == groups.count else {
            return .object([
                ("aperture", .null), ("pgsizes", .uint(0)), ("usable", .array([])), ("reserved", .array([])),
            ])
        }
        let aperture = known.dropFirst().reduce(Optional(known[0].aperture)) { $0?.intersection($1.aperture) }
        let pageSizes = known.reduce(UInt64.max) { $0 & $1.pageSizes }
        var seen = Set<ReservedRegion>()
        var reserved: [JSONValue] = []
        for group in groups {
            for region in database.regions(group: group) ?? [] {
                // One entry per distinct region; the group field is left out, as the view is the session's.
                var shared = region
                shared.group = nil
                if seen.insert(shared).inserted {
                    reserved.append(Conflict(region).json)
                }
            }
        }
        let usable = database.usableRanges(groups: groups, relaxable: relaxable)
        return .object([
            ("aperture", aperture.map { .array([.uint($0.first), .uint($0.last)]) } ?? .null),
            ("pgsizes", .uint(pageSizes)),
            ("usable", .array(usable.map { .array([.uint($0.first), .uint($0.last)]) })),
            ("reserved", .array(reserved)),
        ])
    }
}
