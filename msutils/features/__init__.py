"""Features computed from images: radiomics, selection, reliability (ICC), volumes, CR / RE fusion maps."""
