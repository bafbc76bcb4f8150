import COpenSSL

/// A failed libcrypto call: what was being done and OpenSSL's own reasons.
struct OpenSSLFailure: Error, CustomStringConvertible {
    var operation: String
    var reasons: [String]

    /// Takes (and clears) the calling thread's OpenSSL error queue.
    init(_ operation: String) {
        self.operation = operation
        var reasons: [String] = []
        while case let code = ERR_get_error(), code != 0 {
            var buffer = [CChar](repeating: 0, count: 256)
            ERR_error_string_n(code, &buffer, buffer.count)
            reasons.append(String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
        self.reasons = reasons
    }

    var description: String { reasons.isEmpty ? operation : "\(operation): \(reasons.joined(separator: "; "))" }
}

/// An EVP_PKEY, freed with the object.
final class OpenSSLPrivateKey {
    let pointer: OpaquePointer

    private init(_ pointer: OpaquePointer) { self.pointer = pointer }
    deinit { EVP_PKEY_free(pointer) }

    /// A new ECDSA P-256 key.
    static func generateP256() throws(OpenSSLFailure) -> OpenSSLPrivateKey {
        guard let key = pbkv_generate_p256_key() else { throw OpenSSLFailure("generating a P-256 key") }
        return OpenSSLPrivateKey(key)
    }

    /// Reads a PEM private key (PKCS#8 or SEC 1).
    init(pem: String) throws(OpenSSLFailure) {
        let key = withMemoryBIO(reading: pem) { PEM_read_bio_PrivateKey($0, nil, nil, nil) }
        guard let key else { throw OpenSSLFailure("reading a PEM private key") }
        self.pointer = key
    }

    /// The key as PKCS#8 PEM (`BEGIN PRIVATE KEY`), unencrypted.
    func pem() throws(OpenSSLFailure) -> String {
        try writingMemoryBIO("encoding a private key") { PEM_write_bio_PrivateKey($0, pointer, nil, nil, 0, nil, nil) }
    }
}

/// An X509 certificate, freed with the object.
final class OpenSSLCertificate {
    let pointer: OpaquePointer

    deinit { X509_free(pointer) }

    /// Takes ownership of a certificate OpenSSL handed out (one reference, freed with the object).
    init(owning pointer: OpaquePointer) { self.pointer = pointer }

    /// An empty v3 certificate to fill in and sign.
    static func makeV3() throws(OpenSSLFailure) -> OpenSSLCertificate {
        guard let certificate = X509_new() else { throw OpenSSLFailure("allocating a certificate") }
        let made = OpenSSLCertificate(owning: certificate)
        guard X509_set_version(certificate, 2) == 1 else { throw OpenSSLFailure("setting the certificate version") }
        return made
    }

    /// Reads the first certificate of a PEM text.
    init(pem: String) throws(OpenSSLFailure) {
        let certificate = withMemoryBIO(reading: pem) { PEM_read_bio_X509($0, nil, nil, nil) }
        guard let certificate else { throw OpenSSLFailure("reading a PEM certificate") }
        self.pointer = certificate
    }

    /// Reads every certificate of a PEM text, in order (a chain: leaf first); at least one.
    static func all(pem: String) throws(OpenSSLFailure) -> [OpenSSLCertificate] {
        ERR_clear_error()
        let certificates = withMemoryBIO(reading: pem) { bio -> [OpenSSLCertificate]? in
            var found: [OpenSSLCertificate] = []
            while let certificate = PEM_read_bio_X509(bio, nil, nil, nil) { found.append(OpenSSLCertificate(owning: certificate)) }
            return found
        }
        guard let certificates, !certificates.isEmpty else { throw OpenSSLFailure("reading a PEM certificate") }
        ERR_clear_error()  // the read that ended the loop found no further certificate
        return certificates
    }

    /// Reads a DER-encoded certificate; the whole input must be one certificate.
    init(der: [UInt8]) throws(OpenSSLFailure) {
        let parsed: OpaquePointer? = der.withUnsafeBufferPointer { buffer in
            guard let base = buffer.baseAddress, buffer.count <= Int(Int32.max) else { return nil }
            var cursor: UnsafePointer<UInt8>? = base
            let certificate = d2i_X509(nil, &cursor, buffer.count)
            if let certificate, cursor != base + buffer.count {
                X509_free(certificate)
                return nil
            }
            return certificate
        }
        guard let parsed else { throw OpenSSLFailure("reading a DER certificate") }
        self.pointer = parsed
    }

    func pem() throws(OpenSSLFailure) -> String {
        try writingMemoryBIO("encoding a certificate") { PEM_write_bio_X509($0, pointer) }
    }

    /// The subject's common name (UTF-8), if it has one.
    var commonName: String? {
        guard let subject = X509_get_subject_name(pointer) else { return nil }
        let index = X509_NAME_get_index_by_NID(subject, NID_commonName, -1)
        guard index >= 0, let entry = X509_NAME_get_entry(subject, index), let data = X509_NAME_ENTRY_get_data(entry) else {
            return nil
        }
        var utf8: UnsafeMutablePointer<UInt8>?
        let length = ASN1_STRING_to_UTF8(&utf8, data)
        guard length >= 0, let utf8 else { return nil }
        defer { pbkv_free(utf8) }
        return String(decoding: UnsafeBufferPointer(start: utf8, count: Int(length)), as: UTF8.self)
    }

    /// The subject alternative names: (GEN_URI, GEN_DNS, GEN_IPADD or GEN_EMAIL, bytes).
    var subjectAlternativeNames: [(type: Int32, bytes: [UInt8])] {
        guard let names = pbkv_subject_alternative_names(pointer) else { return [] }
        defer { GENERAL_NAMES_free(names) }
        var result: [(type: Int32, bytes: [UInt8])] = []
        for index in 0..<pbkv_general_names_count(names) {
            var type: Int32 = 0
            var length: Int32 = 0
            guard let bytes = pbkv_general_name_at(names, index, &type, &length) else { continue }
            result.append((type, Array(UnsafeBufferPointer(start: bytes, count: Int(length)))))
        }
        return result
    }
}

/// Runs `body` on a read-only memory BIO over `text`.
private func withMemoryBIO<T>(reading text: String, _ body: (OpaquePointer) -> T?) -> T? {
    var bytes = Array(text.utf8)
    return bytes.withUnsafeMutableBytes { buffer -> T? in
        guard let bio = BIO_new_mem_buf(buffer.baseAddress, Int32(buffer.count)) else { return nil }
        defer { BIO_free(bio) }
        return body(bio)
    }
}

/// Runs `write` on an empty memory BIO and returns what it wrote (`write` returns 1 on success).
private func writingMemoryBIO(_ operation: String, _ write: (OpaquePointer) -> Int32) throws(OpenSSLFailure) -> String {
    guard let bio = BIO_new(BIO_s_mem()) else { throw OpenSSLFailure(operation) }
    defer { BIO_free(bio) }
    guard write(bio) == 1 else { throw OpenSSLFailure(operation) }
    var data: UnsafeMutablePointer<CChar>?
    let length = pbkv_bio_contents(bio, &data)
    guard length > 0, let data else { throw OpenSSLFailure(operation) }
    return String(decoding: UnsafeRawBufferPointer(start: data, count: length), as: UTF8.self)
}
