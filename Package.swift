// swift-tools-version: 6.2
import PackageDescription

let package = Package(
    name: "iommu-policyd",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "iommu-policyctl", targets: ["iommu-policyctl"]),
        .executable(name: "iommu-policyd", targets: ["iommu-policyd"]),
        .executable(name: "iommu-policyd-bench", targets: ["iommu-policyd-bench"]),
        .library(name: "PolicyClient", targets: ["PolicyClient"]),
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
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
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
        // QMP framing for the admin socket: a stream of JSON values in, CRLF-ended messages out.
        .target(name: "QMPWire"),
        // Counters and histograms through swift-metrics, rendered as Prometheus text.
        .target(
            name: "DaemonMetrics",
            dependencies: [
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]),
        .target(name: "CLinuxShim"),
        // The VFIO type1 and iommufd ioctls, with the iommufd structs Debian 12's headers lack.
        .target(name: "CVFIO"),
        // The kernel backends: VFIO type1 containers and iommufd IOAS, behind IOMMUBackend.
        .target(
            name: "KernelBackends",
            dependencies: [
                "CVFIO", "IOMMUCore", "IOMMUBackends", .product(name: "SystemPackage", package: "swift-system"),
            ]),
        // The thin Swift edge over Unix stream sockets, fd passing, memfds.
        .target(
            name: "UnixSockets",
            dependencies: ["CLinuxShim", .product(name: "SystemPackage", package: "swift-system")]
        ),
        // libsystemd (Debian's libsystemd-dev): sd_notify, sd_listen_fds_with_names, sd_journal_sendv.
        .systemLibrary(
            name: "CSystemd",
            pkgConfig: "libsystemd",
            providers: [.apt(["libsystemd-dev"])]
        ),
        // Readiness, watchdog and status notifications, socket activation, the journal LogHandler.
        .target(
            name: "SystemdSupport",
            dependencies: ["CSystemd", .product(name: "Logging", package: "swift-log")]
        ),
        // Sessions, the tenant server and the services the daemon runs.
        .target(
            name: "PolicyDaemon",
            dependencies: [
                "IOMMUCore", "PlatformDiscovery", "IOMMUBackends", "VFIOUserWire", "UnixSockets", "SystemdSupport",
                "QMPWire", "DaemonMetrics",
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // The tenant-side client library.
        .target(name: "PolicyClient", dependencies: ["VFIOUserWire", "UnixSockets"]),
        // Command-line options shared by the two executables.
        .target(
            name: "PolicyCommandLine",
            dependencies: ["PlatformDiscovery", .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        .executableTarget(
            name: "iommu-policyd",
            dependencies: [
                "PolicyDaemon", "PolicyCommandLine", "IOMMUBackends", "PlatformDiscovery", "UnixSockets", "SystemdSupport",
                "DaemonMetrics", "KernelBackends",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .executableTarget(
            name: "iommu-policyctl",
            dependencies: [
                "IOMMUCore",
                "PlatformDiscovery",
                "PolicyCommandLine",
                "PolicyClient",
                "UnixSockets",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        // The test client the VM rig runs inside a QEMU guest (Tests/vm).
        .executableTarget(
            name: "iommu-vm-guest",
            dependencies: [
                "IOMMUCore", "PolicyClient", "UnixSockets",
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        // Benchmarks: the request path against a C echo baseline, decision cost, memory,
        // start-up and fairness (docs/PERFORMANCE.md).
        .executableTarget(
            name: "iommu-policyd-bench",
            dependencies: [
                "IOMMUCore", "PlatformDiscovery", "PolicyClient", "UnixSockets", "VFIOUserWire",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // Seeded randomness, processes and temporary directories for the test targets.
        .target(name: "TestSupport", path: "Tests/TestSupport"),
        .testTarget(
            name: "IOMMUCoreTests",
            dependencies: [
                "IOMMUCore",
                .product(name: "PropertyBased", package: "swift-property-based"),
            ]
        ),
        .testTarget(
            name: "PlatformDiscoveryTests",
            dependencies: ["PlatformDiscovery", "IOMMUCore", "TestSupport"],
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
        .testTarget(name: "VFIOUserWireTests", dependencies: ["VFIOUserWire", "TestSupport"]),
        .testTarget(name: "QMPWireTests", dependencies: ["QMPWire", "TestSupport"]),
        .testTarget(name: "KernelBackendsTests", dependencies: ["KernelBackends", "IOMMUBackends", "TestSupport"]),
        .testTarget(name: "DaemonMetricsTests", dependencies: ["DaemonMetrics"]),
        .testTarget(
            name: "UnixSocketsTests",
            dependencies: ["UnixSockets", .product(name: "SystemPackage", package: "swift-system")]
        ),
        .testTarget(
            name: "PolicyCtlTests",
            dependencies: ["iommu-policyctl", "TestSupport"]
        ),
        // The unit files, catalog and `make install`, checked with the real systemd tools.
        .testTarget(
            name: "SystemdSupportTests",
            dependencies: ["SystemdSupport", .product(name: "Logging", package: "swift-log")]),
        .testTarget(
            name: "SystemdUnitTests", dependencies: ["PolicyDaemon", "iommu-policyd", "iommu-policyctl", "TestSupport"]),
        // Drive the real daemon binary over real sockets.
        .testTarget(
            name: "PolicyDaemonTests",
            dependencies: [
                "iommu-policyd", "iommu-policyctl", "PolicyClient", "PolicyDaemon", "UnixSockets", "VFIOUserWire",
                "TestSupport",
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
