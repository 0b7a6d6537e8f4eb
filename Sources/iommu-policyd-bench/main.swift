print("iommu-policyd-bench: not yet")
