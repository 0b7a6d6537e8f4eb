print("iommu-policyctl: not yet")
