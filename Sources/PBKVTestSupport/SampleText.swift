import PBKVCore
import PBKVWire

/// Deterministic text values for measurements and tests of compression: English-like prose (words
/// of a fixed vocabulary in random order, so every value is new text) and JSON-like customer
/// records (the same fields in every record, different values) — never random bytes.
public struct SampleText: Sendable {
    private var random: SplitMix64

    public init(seed: UInt64) { random = SplitMix64(seed: seed) }

    private mutating func below(_ n: Int) -> Int { Int(random.next() % UInt64(n)) }
    private mutating func pick(_ list: [String]) -> String { list[below(list.count)] }

    /// Words of the vocabulary separated by spaces, exactly `bytes` bytes long.
    public mutating func english(bytes: Int) -> String {
        var text = ""
        while text.utf8.count < bytes {
            if !text.isEmpty { text += " " }
            text += pick(Self.words)
        }
        return String(text.utf8.prefix(bytes))!
    }

    /// A customer record as JSON (profile, address, preferences, orders, a note), exactly
    /// `bytes` bytes long (cut short if `bytes` is below the fixed fields' length).
    public mutating func jsonRecord(id: Int, bytes: Int) -> String {
        let bool = { (b: Int) in b == 0 ? "false" : "true" }
        var text = "{\"id\":\(100_000 + id),\"type\":\"customer\",\"name\":\"\(title(pick(Self.words))) \(title(pick(Self.words)))\""
        text += ",\"email\":\"\(pick(Self.words)).\(pick(Self.words))\(below(1000))@example.com\""
        text += ",\"plan\":\"\(pick(["free", "pro", "team", "enterprise"]))\",\"status\":\"\(pick(["active", "suspended", "pending", "closed"]))\""
        text += ",\"created_at\":\"2026-\(two(1 + below(12)))-\(two(1 + below(28)))T\(two(below(24))):\(two(below(60))):\(two(below(60)))Z\""
        text += ",\"address\":{\"street\":\"\(1 + below(998)) \(title(pick(Self.words))) Street\",\"city\":\"\(pick(Self.cities))\""
        text += ",\"country\":\"\(pick(["PT", "NO", "PE", "EC", "GH", "VN", "AU", "SN", "CH", "LV"]))\",\"postcode\":\"\(below(90_000) + 10_000)\"}"
        text += ",\"preferences\":{\"newsletter\":\(bool(below(2))),\"language\":\"en\",\"theme\":\"\(pick(["dark", "light"]))\""
        text += ",\"notifications\":{\"email\":\(bool(below(2))),\"sms\":\(bool(below(2)))}},\"orders\":["
        var first = true
        while text.utf8.count < bytes - 160 {
            text += first ? "" : ","
            first = false
            text += "{\"order_id\":\(below(1_000_000)),\"sku\":\"SKU-\(1000 + below(9000))\",\"quantity\":\(1 + below(4))"
            text += ",\"price_cents\":\(100 + below(99_900)),\"currency\":\"EUR\",\"status\":\"\(pick(["shipped", "delivered", "returned"]))\"}"
        }
        text += "],\"note\":\""
        let room = bytes - text.utf8.count - 2
        if room > 0 { text += english(bytes: room) }
        text += "\"}"
        return String(text.utf8.prefix(bytes))!
    }

    private func two(_ n: Int) -> String { n < 10 ? "0\(n)" : "\(n)" }
    private func title(_ word: String) -> String { word.prefix(1).uppercased() + word.dropFirst() }

    private static let cities = ["Lisbon", "Oslo", "Lima", "Quito", "Accra", "Hanoi", "Perth", "Dakar", "Bern", "Riga"]

    /// 160 common English words.
    static let words: [String] = """
        the of and to in is was that for it with as his on be at by had this not are but from or have an they which \
        one you were her all she there would their we him been has when who will more no if out so said what up its \
        about into than them can only other new some could time these two may then do first any my now such like our \
        over man me even most made after also did many before must through back years where much your way well down \
        should because each just those people how too little state good very make world still own see men work long \
        here get both between life being under never day same another know while last might us great old year off \
        come since against go came right used take three house water river city light
        """.split(separator: " ").map(String.init)
}
