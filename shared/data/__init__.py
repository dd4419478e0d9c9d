"""Data: the one Hub-or-bundled path (hub), sources -> rendered texts -> split (sources), packing into blocks
(packing), tokenizers (tokenizer), uint16/uint32 token bins and their windows (bins), and the cleaning helpers and
苇川 record -> text rendering the preparation stages share (text). Imports shared.config only."""
