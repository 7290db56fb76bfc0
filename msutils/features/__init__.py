"""Features computed from images: radiomics, selection, reliability (ICC), volumes."""
