import IOMMUCore
import PropertyBased
import Testing

@Suite struct IntervalTreeTests {
    @Test func overlapQueriesFindEntriesTouchingEitherEnd() {
        var tree = IntervalTree<String>()
        tree.insert(IOVARange(first: 0x1000, last: 0x1fff)!, "a")
        tree.insert(IOVARange(first: 0x3000, last: 0x3fff)!, "b")
        #expect(tree.firstOverlap(IOVARange(first: 0x1fff, last: 0x1fff)!)?.value == "a")
        #expect(tree.firstOverlap(IOVARange(first: 0x2000, last: 0x2fff)!) == nil)
        #expect(tree.overlapping(IOVARange(first: 0x1fff, last: 0x3000)!).map(\.value) == ["a", "b"])
    }

    @Test func overlappingEntriesWithTheSameStartAreAllReturned() {
        var tree = IntervalTree<Int>()
        for i in 0..<5 { tree.insert(IOVARange(first: 0x1000, last: 0x1000 + UInt64(i) * 0x1000)!, i) }
        #expect(tree.overlapping(IOVARange(first: 0x4000, last: 0x4000)!).map(\.value).sorted() == [3, 4])
        #expect(tree.invariantViolation() == nil)
    }

    @Test func removingReturnsTheValueAndFreesTheSlot() {
        var tree = IntervalTree<Int>()
        let a = tree.insert(IOVARange(first: 0, last: 0xfff)!, 1)
        #expect(tree.remove(a) == 1)
        #expect(tree.remove(a) == nil)
        #expect(tree.isEmpty)
        tree.insert(IOVARange(first: 0, last: 0xfff)!, 2)
        #expect(tree.count == 1)
        #expect(tree.invariantViolation() == nil)
    }

    @Test func entriesAtTheTopOfTheSpaceAreFound() {
        var tree = IntervalTree<Int>()
        tree.insert(IOVARange(start: UInt64.max - 0xfff, size: 0x1000)!, 9)
        #expect(tree.firstOverlap(IOVARange(first: UInt64.max, last: UInt64.max)!)?.value == 9)
        #expect(tree.overlaps(.all))
    }

    @Test func copiesAreIndependent() {
        var tree = IntervalTree<Int>()
        tree.insert(IOVARange(first: 0, last: 1)!, 1)
        var copy = tree
        copy.insert(IOVARange(first: 2, last: 3)!, 2)
        #expect(tree.count == 1)
        #expect(copy.count == 2)
    }

    /// Operations are encoded as numbers so the property library can shrink a failing sequence.
    @Test func agreesWithANaiveListUnderRandomInsertsRemovesAndQueries() async {
        await propertyCheck(count: 300, input: Gen.uint32().array(of: 1...200)) { ops in
            var tree = IntervalTree<UInt32>()
            var model: [(id: IntervalTree<UInt32>.ID, range: IOVARange, value: UInt32)] = []
            for op in ops {
                let a = UInt64(op >> 8 & 0x3f)
                let b = UInt64(op >> 14 & 0x3f)
                let range = IOVARange(first: min(a, b), last: max(a, b))!
                switch op & 0x3 {
                case 0, 1:
                    let id = tree.insert(range, op)
                    model.append((id, range, op))
                case 2 where !model.isEmpty:
                    let victim = model.remove(at: Int(op >> 20) % model.count)
                    #expect(tree.remove(victim.id) == victim.value)
                default:
                    let expected = model.filter { $0.range.overlaps(range) }.map(\.value).sorted()
                    #expect(tree.overlapping(range).map(\.value).sorted() == expected)
                    let lowest = model.filter { $0.range.overlaps(range) }.map(\.range.first).min()
                    #expect(tree.firstOverlap(range)?.range.first == lowest)
                }
                #expect(tree.count == model.count)
            }
            #expect(tree.invariantViolation() == nil)
            #expect(tree.entries.map(\.range.first) == model.map(\.range.first).sorted())
        }
    }

    @Test func aMillionDisjointEntriesInsertQueryAndRemove() {
        var tree = IntervalTree<UInt32>()
        let count: UInt64 = 1_000_000
        // A stride permutation, so insertion order is not sorted.
        let step: UInt64 = 7919
        for i in 0..<count {
            let page = (i * step) % count
            tree.insert(IOVARange(start: page << 12, size: 0x1000)!, UInt32(page))
        }
        #expect(tree.count == Int(count))
        for i in stride(from: UInt64(0), to: count, by: 997) {
            #expect(tree.firstOverlap(IOVARange(first: (i << 12) + 5, last: (i << 12) + 5)!)?.value == UInt32(i))
        }
        #expect(tree.firstOverlap(IOVARange(first: count << 12, last: UInt64.max)!) == nil)
        var removed = 0
        for entry in tree.overlapping(IOVARange(first: 0, last: (1000 << 12) - 1)!) {
            tree.remove(entry.id)
            removed += 1
        }
        #expect(removed == 1000)
        #expect(tree.count == Int(count) - 1000)
        #expect(tree.invariantViolation() == nil)
    }
}
