import IOMMUCore
import Testing

@Suite struct IOVARangeTests {
    @Test func topPageOfTheAddressSpaceIsRepresentable() throws {
        let top = try #require(IOVARange(start: UInt64.max - 4095, size: 4096))
        #expect(top.first == 0xffff_ffff_ffff_f000)
        #expect(top.last == UInt64.max)
        #expect(top.size == 4096)
        #expect(top.isAligned(to: 4096))
    }

    @Test func sizeThatWrapsPastTheTopIsRefused() {
        #expect(IOVARange(start: UInt64.max - 4095, size: 4097) == nil)
        #expect(IOVARange(start: 2, size: UInt64.max) == nil)
        #expect(IOVARange(start: 1, size: UInt64.max)?.last == UInt64.max)
        #expect(IOVARange(start: 0, size: UInt64.max) != nil)
    }

    @Test func zeroSizeAndInvertedBoundsAreRefused() {
        #expect(IOVARange(start: 0x1000, size: 0) == nil)
        #expect(IOVARange(first: 2, last: 1) == nil)
        #expect(IOVARange(first: 7, last: 7)?.size == 1)
    }

    @Test func wholeSpaceHasNoRepresentableSize() {
        #expect(IOVARange.all.size == nil)
        #expect(IOVARange.all.sizeMinusOne == UInt64.max)
    }

    @Test func overlapIsInclusiveAtBothEnds() throws {
        let msi = try #require(IOVARange(first: 0xfee0_0000, last: 0xfeef_ffff))
        #expect(msi.overlaps(IOVARange(first: 0xfeef_ffff, last: 0xfef0_0fff)!))
        #expect(msi.overlaps(IOVARange(first: 0xfedf_f000, last: 0xfee0_0000)!))
        #expect(!msi.overlaps(IOVARange(first: 0xfef0_0000, last: 0xfef0_0fff)!))
        #expect(!msi.overlaps(IOVARange(first: 0xfedf_f000, last: 0xfedf_ffff)!))
    }

    @Test func subtractingAHoleLeavesTheSidesExactlyAdjacent() throws {
        let space = try #require(IOVARange(first: 0, last: 0xffff))
        let hole = try #require(IOVARange(first: 0x1000, last: 0x1fff))
        #expect(
            space.subtracting(hole) == [IOVARange(first: 0, last: 0xfff)!, IOVARange(first: 0x2000, last: 0xffff)!])
        #expect(hole.subtracting(space) == [])
        #expect(
            IOVARange.all.subtracting(IOVARange(first: 0, last: UInt64.max - 1)!) == [
                IOVARange(first: UInt64.max, last: UInt64.max)!
            ])
    }

    @Test func listSubtractionAndIntersectionHandleTheTopOfTheSpace() throws {
        let holes = [
            IOVARange(first: 0xfee0_0000, last: 0xfeef_ffff)!, IOVARange(first: UInt64.max - 0xfff, last: UInt64.max)!,
        ]
        let usable = [IOVARange.all].subtracting(holes)
        #expect(
            usable == [
                IOVARange(first: 0, last: 0xfedf_ffff)!, IOVARange(first: 0xfef0_0000, last: UInt64.max - 0x1000)!,
            ])
        let other = [IOVARange(first: 0x8000_0000, last: UInt64.max)!]
        #expect(
            usable.intersecting(other) == [
                IOVARange(first: 0x8000_0000, last: 0xfedf_ffff)!,
                IOVARange(first: 0xfef0_0000, last: UInt64.max - 0x1000)!,
            ])
    }

    @Test func normalizingMergesTouchingAndOverlappingRanges() {
        let ranges = [
            IOVARange(first: 10, last: 20)!, IOVARange(first: 0, last: 9)!, IOVARange(first: 15, last: 30)!,
            IOVARange(first: 32, last: 40)!,
        ]
        #expect(ranges.normalized() == [IOVARange(first: 0, last: 30)!, IOVARange(first: 32, last: 40)!])
    }

    @Test func descriptionIsLowerCaseHexInclusive() {
        #expect(IOVARange(first: 0xfee0_0000, last: 0xfeef_ffff)!.description == "0xfee00000-0xfeefffff")
    }
}
