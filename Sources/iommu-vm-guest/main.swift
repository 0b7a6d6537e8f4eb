print("iommu-vm-guest: not yet")
