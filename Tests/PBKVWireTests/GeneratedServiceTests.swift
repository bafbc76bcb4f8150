import PBKVTLS
import PBKVCore
import PBKVWire
import Testing

/// The generated method values (Sources/PBKVWire/Generated/pbkv.services.swift) and the one
/// authorization rule the method tables apply.
@Suite("Generated services")
struct GeneratedServiceTests {
    @Test("A method's value makes its call and takes only its own reply type")
    func methodValues() {
        let id = RequestID(clientID: 9, seq: 3)
        #expect(KVMethods.get.call(GetArgs(key: "k", id: id)) == .get(key: "k", id: id))
        #expect(KVMethods.putHash.call(PutHashArgs(key: "k", value: "v", id: id)) == .putHash(key: "k", value: "v", id: id))
        #expect(ViewServiceMethods.getView.call(GetViewArgs()) == .getView)
        #expect(KVMethods.get.reply(.kv(KVReply(code: .noKey))) == KVReply(code: .noKey))
        #expect(KVMethods.get.reply(.view(.initial)) == nil)
        #expect(ReplicaMethods.transfer.reply(.forward(ForwardReply(code: .ok))) == nil)
        #expect(ViewServiceMethods.ping.reply(.view(View(viewnum: 4, primary: "a", backup: "b")))?.viewnum == 4)
    }

    @Test("Every call names a method of exactly one service, as in the .proto")
    func methodNames() {
        let served = ["Ping", "GetView", "ViewServiceStatus", "ViewServiceRole", "Get", "Put", "PutHash", "ServerStatus", "Forward", "Transfer"]
        #expect(Set(Call.methodNames) == Set(served))
        #expect(Call.methodNames.count == served.count)
        #expect(Call.ping(PingArgs(server: "s", viewnum: 1)).method == "Ping")
        #expect(Call.serverStatus.method == "ServerStatus")
    }

    @Test("Member calls need a server certificate for the address they speak for; client calls any role")
    func refusals() throws {
        let server = PeerAuthentication.certificate(MemberIdentity(name: "s1", role: .server, addresses: ["127.0.0.1:7001"]))
        let client = PeerAuthentication.certificate(MemberIdentity(name: "c1", role: .client))
        let noRole = PeerAuthentication.certificate(nil)
        let ping = Call.ping(PingArgs(server: "127.0.0.1:7001", viewnum: 0))
        let forwardAsOther = Call.forward(ForwardArgs(viewnum: 1, primary: "127.0.0.1:7002", firstIndex: 0, ops: []))
        #expect(server.refusal(of: ping) == nil)
        #expect(server.refusal(of: forwardAsOther)?.code == .permissionDenied)
        #expect(client.refusal(of: ping)?.code == .permissionDenied)
        #expect(client.refusal(of: .get(key: "k", id: RequestID(clientID: 1, seq: 1))) == nil)
        #expect(noRole.refusal(of: .getView)?.code == .permissionDenied)
        #expect(PeerAuthentication.plaintext.refusal(of: forwardAsOther) == nil)
    }
}
