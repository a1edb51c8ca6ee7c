"""A plugin module that cannot be imported (tests check that this is reported clearly)."""

raise ImportError("polystream_brokenplugin needs a library that is not installed")
