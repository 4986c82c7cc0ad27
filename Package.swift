// swift-tools-version:6.0
import PackageDescription

/// Settings shared by every target. The numeric kernels need the host CPU's vector
/// units (AVX2/AVX-512 and FMA): without them `addingProduct` lowers to a libm call.
let swiftSettings: [SwiftSetting] = [
    .unsafeFlags(["-Xcc", "-march=native"]),
]

/// The numeric library is optimised even in debug builds: unoptimised SIMD code is two
/// orders of magnitude slower, which would make the test suite train models for minutes.
let numericSettings: [SwiftSetting] = swiftSettings + [
    .unsafeFlags(["-O"], .when(configuration: .debug)),
]

/// What the coordinator and the client daemon both build on.
let daemonDependencies: [Target.Dependency] = [
    "FedModel", "FedCodec", "FedProtocol",
    .product(name: "NIOCore", package: "swift-nio"),
    .product(name: "NIOPosix", package: "swift-nio"),
    .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
    .product(name: "Logging", package: "swift-log"),
    .product(name: "Crypto", package: "swift-crypto"),
]

let package = Package(
    name: "FederatedSwift",
    platforms: [.macOS(.v14)],
    products: [
        .library(name: "FedModel", targets: ["FedModel"]),
        .library(name: "FedCodec", targets: ["FedCodec"]),
        .library(name: "FedProtocol", targets: ["FedProtocol"]),
        .library(name: "FedSim", targets: ["FedSim"]),
        .executable(name: "fedsim", targets: ["fedsim"]),
        .executable(name: "fedbench", targets: ["fedbench"]),
        .executable(name: "fedcoord", targets: ["fedcoord"]),
        .executable(name: "fedclient", targets: ["fedclient"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
        .package(url: "https://github.com/x-sheep/swift-property-based", from: "2.0.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.80.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.30.0"),
        .package(url: "https://github.com/apple/swift-certificates", from: "1.10.0"),
        .package(url: "https://github.com/apple/swift-asn1", from: "1.1.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.0.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.0.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
    ],
    targets: [
        .systemLibrary(
            name: "CZlib",
            providers: [.apt(["zlib1g-dev"]), .brew(["zlib"])]
        ),
        .target(
            name: "CChecksum",
            dependencies: ["CZlib"],
            cSettings: [.unsafeFlags(["-march=native", "-O3"])]
        ),
        .target(
            name: "CMemoryHints",
            cSettings: [.unsafeFlags(["-march=native", "-O3"])]
        ),
        .target(
            name: "FedModel",
            dependencies: [
                "CZlib", "CMemoryHints",
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            exclude: ["Kernels/generate_gemm_kernels.py"],
            swiftSettings: numericSettings
        ),
        .target(
            name: "FedCodec",
            dependencies: ["CZlib", "CChecksum"],
            swiftSettings: numericSettings
        ),
        .target(
            name: "FedProtocol",
            dependencies: [
                "CZlib", "CChecksum",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "FedFuzz",
            dependencies: [
                "FedProtocol", "FedCodec",
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "FedConfiguration",
            dependencies: ["FedModel", "FedCodec", .product(name: "TOMLKit", package: "TOMLKit")],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "FedLifecycle",
            dependencies: [
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "FedRounds",
            dependencies: ["FedModel", "FedCodec"],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "FedStore",
            dependencies: [
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "FedCoordinator",
            dependencies: daemonDependencies + [
                "FedRounds", "FedStore", "FedConfiguration",
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "FedClient",
            dependencies: daemonDependencies,
            swiftSettings: swiftSettings
        ),
        .target(
            name: "FedSim",
            dependencies: [
                "FedModel",
                "FedCodec",
                "FedRounds",
                "FedCoordinator",
                "FedClient",
                "FedStore",
                "FedConfiguration",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "fedsim",
            dependencies: [
                "FedSim", "FedStore", "FedCodec", "FedCoordinator",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "fedcoord",
            dependencies: [
                "FedCoordinator", "FedModel", "FedStore", "FedCodec", "FedLifecycle",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "fedclient",
            dependencies: [
                "FedClient", "FedModel", "FedLifecycle", "FedConfiguration",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "fedbench",
            dependencies: [
                "FedModel", "FedFuzz",
                "FedCodec",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "FedModelTests",
            dependencies: ["FedModel"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "FedCodecTests",
            dependencies: [
                "FedCodec", "CChecksum", "CZlib",
                .product(name: "PropertyBased", package: "swift-property-based"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "FedProtocolTests",
            dependencies: [
                "FedProtocol", "FedFuzz",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOTestUtils", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "ConformanceTests",
            dependencies: [
                "FedCodec", "FedProtocol",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            exclude: ["vectors.json", "decode_shard.py", "read_frames.py"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "FedConfigurationTests",
            dependencies: ["FedConfiguration", "FedCoordinator", "FedSim", "FedModel"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "FedRoundsTests",
            dependencies: ["FedRounds", "FedModel", "FedCodec"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "FedStoreTests",
            dependencies: ["FedStore", .product(name: "GRDB", package: "GRDB.swift")],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "FedCoordinatorTests",
            dependencies: [
                "FedCoordinator", "FedRounds", "FedClient", "FedModel", "FedProtocol", "FedStore",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "FedSimTests",
            dependencies: ["FedSim", "FedStore", "FedCodec"],
            swiftSettings: swiftSettings
        ),
    ]
)
