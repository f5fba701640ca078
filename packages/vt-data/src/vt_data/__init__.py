"""vt-data: the Video-Thinker data layer: typed records, the trace grammar, video reading,
the embedded synthetic dataset, source converters and WebDataset shards. Imports no other vt package.

Heavy modules (video decoders, webdataset) are imported by the submodules that need them, so
`import vt_data` stays cheap."""

__version__ = "0.1.0"
