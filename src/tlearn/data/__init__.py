"""The images before any model sees them (torch-free): finding them and their splits, decoding, preprocessing,
parallel decoding into batches, the data checks, and the demo's drawn images."""
