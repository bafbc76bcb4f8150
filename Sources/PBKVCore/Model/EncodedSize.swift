/// Upper bounds on the protobuf size of pbkv messages, so that batches can be cut to fit a
/// frame without encoding them first.
///
/// A forward batch or a transfer chunk is one envelope around a list of items: operations
/// (key and value), packed entries (key and value) or duplicate-table rows (a reply value). Each
/// item costs at most `itemOverhead` bytes besides its key and value (field tags, length
/// prefixes, kind, request id, reply code: 51 bytes at most for an operation); the envelope
/// around the list at most `batchOverhead` bytes besides the primary's address (envelope,
/// request, view number, indices, transfer id: 81 bytes at most). A KV reply to a client is
/// one item in an envelope as well (52 bytes besides the value). Checked against real encodings
/// with every number at its largest in the codec tests.
public enum EncodedSize {
    /// Most bytes one item of a batch takes besides its key and value.
    public static let itemOverhead = 64
    /// Most bytes a batch's envelope takes besides the primary's address and the items.
    public static let batchOverhead = 128

    /// Most bytes an item with a key and a value of these sizes takes in a batch.
    public static func item(keyBytes: Int, valueBytes: Int) -> Int { itemOverhead + keyBytes + valueBytes }

    /// Most bytes the envelope around a batch's items takes, sent by a primary whose address
    /// is `primaryBytes` long.
    public static func batchEnvelope(primaryBytes: Int) -> Int { batchOverhead + primaryBytes }

    /// The default largest frame payload (compressed or not) of the wire protocol: 16 MiB
    /// (`Frame.defaultMaxPayload`).
    public static let defaultMaxFramePayload = 16 * 1024 * 1024
}
