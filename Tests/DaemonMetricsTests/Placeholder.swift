import Testing
@testable import DaemonMetrics
