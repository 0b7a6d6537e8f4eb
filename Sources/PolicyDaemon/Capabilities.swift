import Foundation
import IOMMUCore

/// What a client's VERSION capabilities ask of us. Parsed with Foundation's JSON parser: it
/// happens once per connection, never on the request path.
struct ClientCapabilities: Sendable {
    /// `"x-iommu-policyd": {"error_detail": true}`: error replies carry the decision JSON.
    var errorDetail = false

    struct Problem: Error {
        var reason: String
    }

    static func parse(_ json: [UInt8]) -> Result<ClientCapabilities, Problem> {
        // vfio-user: the version data is optional.
        guard !json.isEmpty else { return .success(ClientCapabilities()) }
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: Data(json))
        } catch {
            return .failure(Problem(reason: "version data is not valid JSON"))
        }
        guard let top = object as? [String: Any] else {
            return .failure(Problem(reason: "version data must be a JSON object"))
        }
        guard let capabilities = top["capabilities"] else { return .success(ClientCapabilities()) }
        guard let capabilities = capabilities as? [String: Any] else {
            return .failure(Problem(reason: "\"capabilities\" must be an object"))
        }
        var result = ClientCapabilities()
        if let ours = capabilities["x-iommu-policyd"] {
            guard let ours = ours as? [String: Any] else {
                return .failure(Problem(reason: "\"x-iommu-policyd\" must be an object"))
            }
            if let detail = ours["error_detail"] {
                guard let flag = detail as? Bool else {
                    return .failure(Problem(reason: "\"error_detail\" must be true or false"))
                }
                result.errorDetail = flag
            }
        }
        return .success(result)
    }
}

/// The capabilities we answer VERSION with.
struct ServerCapabilities {
    var maxDMAMaps: Int
    var pageSizes: UInt64
    var maxDataTransfer: Int
    var errorDetail: Bool

    var json: String {
        JSONValue.object([
            (
                "capabilities",
                .object([
                    ("max_msg_fds", .int(1)),
                    ("max_data_xfer_size", .int(Int64(maxDataTransfer))),
                    ("max_dma_maps", .int(Int64(maxDMAMaps))),
                    ("pgsizes", .uint(pageSizes)),
                    ("x-iommu-policyd", .object([("error_detail", .bool(errorDetail))])),
                ])
            )
        ]).rendered
    }
}
