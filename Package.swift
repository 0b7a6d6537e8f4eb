// swift-tools-version: 6.2
import PackageDescription

let package = Package(
    name: "iommu-policyd",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "iommu-policyctl", targets: ["iommu-policyctl"]),
        .library(name: "IOMMUCore", targets: ["IOMMUCore"]),
        .library(name: "PlatformDiscovery", targets: ["PlatformDiscovery"]),
        .library(name: "IOMMUBackends", targets: ["IOMMUBackends"]),
        .library(name: "VFIOUserWire", targets: ["VFIOUserWire"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
        .package(url: "https://github.com/x-sheep/swift-property-based", from: "2.0.1"),
    ],
    targets: [
        // The pure core: ranges, interval trees, regions, the policy engine. Standard library only.
        .target(name: "IOMMUCore"),
        // Reads the machine (sysfs, ACPI tables, /proc/iomem), profiles and config.
        .target(
            name: "PlatformDiscovery",
            dependencies: [
                "IOMMUCore",
                .product(name: "TOMLKit", package: "TOMLKit"),
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        // The backend protocol and the simulated IOMMU.
        .target(name: "IOMMUBackends", dependencies: ["IOMMUCore"]),
        // The vfio-user frame codec and message structs: strict decoding, no sockets. Standard library only.
        .target(name: "VFIOUserWire"),
        // The Linux calls Swift cannot make directly: cmsg macros, _GNU_SOURCE declarations.
        .target(name: "CLinuxShim"),
        // The thin Swift edge over Unix stream sockets, fd passing, memfds.
        .target(
            name: "UnixSockets",
            dependencies: ["CLinuxShim", .product(name: "SystemPackage", package: "swift-system")]
        ),
        .executableTarget(
            name: "iommu-policyctl",
            dependencies: [
                "IOMMUCore",
                "PlatformDiscovery",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .testTarget(
            name: "IOMMUCoreTests",
            dependencies: [
                "IOMMUCore",
                .product(name: "PropertyBased", package: "swift-property-based"),
            ]
        ),
        .testTarget(
            name: "PlatformDiscoveryTests",
            dependencies: ["PlatformDiscovery", "IOMMUCore"],
            resources: [.copy("Fixtures")]
        ),
        .testTarget(
            name: "IOMMUBackendsTests",
            dependencies: [
                "IOMMUBackends",
                "IOMMUCore",
                .product(name: "PropertyBased", package: "swift-property-based"),
            ]
        ),
        .testTarget(name: "VFIOUserWireTests", dependencies: ["VFIOUserWire"]),
        .testTarget(
            name: "UnixSocketsTests",
            dependencies: ["UnixSockets", .product(name: "SystemPackage", package: "swift-system")]
        ),
        .testTarget(
            name: "PolicyCtlTests",
            dependencies: ["iommu-policyctl"]
        ),
    ],
    swiftLanguageModes: [.v6]
)
