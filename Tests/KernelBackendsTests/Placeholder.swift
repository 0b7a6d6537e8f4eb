import Testing
@testable import KernelBackends
