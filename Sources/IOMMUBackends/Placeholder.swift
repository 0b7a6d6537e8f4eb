enum IOMMUBackendsPlaceholder {}
