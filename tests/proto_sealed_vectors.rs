//! The sealed suite's test vectors (`PROTOCOL.md` §4.9): every byte of a
//! new session, a data frame each way, and a resume, from fixed keys.

use bytes::BytesMut;
use rejoin::proto::sealed::{
    ClientExchange, ClientOutcome, FixedKeys, Psk, ServerExchange, ServerOutcome, StaticKey,
};
use rejoin::proto::{Params, Session};

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

const PSK: [u8; 32] = [0x11; 32];
const CLIENT_E: [u8; 32] = [0x22; 32];
const SERVER_E: [u8; 32] = [0x33; 32];
const SERVER_S: [u8; 32] = [0x44; 32];
const CLIENT_S: [u8; 32] = [0x55; 32];
const SEED: [u8; 32] = [0x66; 32];
const ID: u64 = 0x0102030405060708;

struct Wire {
    hello: Vec<u8>,
    welcome: Vec<u8>,
    confirm: Vec<u8>,
}

/// Runs one exchange with fixed keys, returning the wire bytes.
fn exchange(
    mut client: ClientExchange,
    mut server: ServerExchange,
    mut answer: impl FnMut(&mut ServerExchange),
) -> (Wire, Option<ClientOutcome>, Option<ServerOutcome>) {
    let hello = client.poll_transmit().unwrap().to_vec();
    let mut input = BytesMut::from(&hello[..]);
    server.handle_input(&mut input).unwrap();
    answer(&mut server);
    let welcome = server.poll_transmit().unwrap().to_vec();
    let mut input = BytesMut::from(&welcome[..]);
    client.handle_input(&mut input).unwrap();
    let confirm = client.poll_transmit().unwrap().to_vec();
    let mut input = BytesMut::from(&confirm[..]);
    server.handle_input(&mut input).unwrap();
    let c = client.poll_outcome().map(|o| o.unwrap());
    let s = server.poll_outcome();
    (
        Wire {
            hello,
            welcome,
            confirm,
        },
        c,
        s,
    )
}

fn new_session(
    pinned: bool,
) -> (
    Wire,
    Session,
    Session,
    rejoin::proto::sealed::Link,
    rejoin::proto::sealed::Link,
) {
    let params = Params::default();
    let server_key = StaticKey::from_private(SERVER_S);
    let pin = pinned.then(|| *server_key.public());
    let fixed = FixedKeys {
        ephemeral: Some(CLIENT_E),
        client_static: Some(CLIENT_S),
    };
    let client = ClientExchange::new_session_with(
        params,
        &Psk::from_bytes(PSK),
        b"home",
        pin.as_ref(),
        &fixed,
    )
    .unwrap();
    let server = ServerExchange::with_fixed(
        Some(server_key),
        FixedKeys {
            ephemeral: Some(SERVER_E),
            client_static: None,
        },
    );
    let (wire, c, s) = exchange(client, server, |s| {
        s.accept_new_with_seed(&Psk::from_bytes(PSK), ID, params, SEED)
            .unwrap()
    });
    let Some(ClientOutcome::Established(c)) = c else {
        panic!()
    };
    let Some(ServerOutcome::Established(s)) = s else {
        panic!()
    };
    (wire, c.session, s.session, c.link, s.link)
}

fn seal(session: &mut Session, link: &mut rejoin::proto::sealed::Link, data: &[u8]) -> Vec<u8> {
    // As the stream writes it: one DATA record (§2.2).
    session.handle_write(&rejoin::proto::record::data_header(data.len()));
    session.handle_write(data);
    let window = session.read_count() + 65536;
    let out = link.poll_transmit(session, window).unwrap().to_vec();
    link.handle_transmitted(out.len());
    out
}

const NN_HELLO: &str = "1004686f6d6530000faa684ed28867b97f4a6a2dee5df8ce974e76b7018e3f22a1c4cf2678570f20ca48bd58c6878ff618ebc18a686b3993";
const NN_WELCOME: &str = "59007b0d47d93427f8311160781c7c733fd89f88970aef490d8aa0ee19a4cb8a1b14e63a53c9c028703fc0d211e9d5bc63954727e3aafec485938c1244472a6c07df06dea9ebea65bbd174c497ae6979397b8a7c5f2dd13ef42c14";
const NN_CONFIRM: &str = "20006bfbe608aa2ac3e1cc3d51412d144e57f329859fd51faa57fb16e8935a9ed173";
const NN_DATA_C2S: &str = "2f00167f8efc243c6b2b51e358b264e467c2df796cf37e5f91978269cb2dd037df8150d11f22926657384b57c827d16b67";
const IK_HELLO: &str = "1104686f6d6560000faa684ed28867b97f4a6a2dee5df8ce974e76b7018e3f22a1c4cf2678570f20466e01bce29e79492e5fd5eebb407734052ff9c1588e233dce45ea8801920addd5ca94abf326a66866f6c4f56de37ce3788f4cc04580f3b2a82bfad9817a0b02";
const IK_WELCOME: &str = "59007b0d47d93427f8311160781c7c733fd89f88970aef490d8aa0ee19a4cb8a1b1405612b28fc15673dacb2be69cae275cdca4fc56a8850c1c9ec54503cda09e0068cff959763ebcde794f825c56669a6036a8e81483c40ee43fa";
const IK_CONFIRM: &str = "200031b7c9f49c55ff4fd8b0d3c9c85516579005fa92f549895a20e44aa2f394f648";

#[test]
fn nnpsk0_new_session_and_data() {
    let (wire, mut c, mut s, mut cl, _sl) = new_session(false);
    let data = seal(&mut c, &mut cl, b"hello sealed");
    println!("NN hello   {}", hex(&wire.hello));
    println!("NN welcome {}", hex(&wire.welcome));
    println!("NN confirm {}", hex(&wire.confirm));
    println!("NN data    {}", hex(&data));
    assert_eq!(hex(&wire.hello), hex(&unhex(NN_HELLO)));
    assert_eq!(hex(&wire.welcome), hex(&unhex(NN_WELCOME)));
    assert_eq!(hex(&wire.confirm), hex(&unhex(NN_CONFIRM)));
    assert_eq!(hex(&data), hex(&unhex(NN_DATA_C2S)));
    assert_eq!(c.id(), ID);
    let _ = &mut s;
}

#[test]
fn ikpsk2_new_session() {
    let (wire, ..) = new_session(true);
    println!("IK hello   {}", hex(&wire.hello));
    println!("IK welcome {}", hex(&wire.welcome));
    println!("IK confirm {}", hex(&wire.confirm));
    assert_eq!(hex(&wire.hello), hex(&unhex(IK_HELLO)));
    assert_eq!(hex(&wire.welcome), hex(&unhex(IK_WELCOME)));
    assert_eq!(hex(&wire.confirm), hex(&unhex(IK_CONFIRM)));
}

const RESUME_HELLO: &str = "12080706050403020140001cf579aba45a10ba1d1ef06d91fca2aa9ed0a1150515653155405d0b18cb9a676a3f61c84b01bb8fb206e0e798f8d6eee1256fa9ce51272d3056d90bf1267a5c";
const RESUME_WELCOME: &str = "410030d3c865a48fceb3d6118577cf2e5f228d6ff69866264757785b253cb7a4806a54c26d576976bab16d6bbfd03e0717df364ea0a869c93d68f4895a96d5cefc5bdb";
const RESUME_CONFIRM: &str = "2000c93f36807a981d83cbfde7d0d6e7ba6bd06f679decbd504df12801c293761007";

#[test]
fn nnpsk0_resume() {
    let (_, mut c, s, mut cl, _) = new_session(false);
    seal(&mut c, &mut cl, b"hello sealed");
    // The frame is lost with the connection; the client resumes.
    let fixed = |e| FixedKeys {
        ephemeral: Some(e),
        client_static: None,
    };
    let client = ClientExchange::resume_with(&c, None, &fixed([0x77; 32])).unwrap();
    let server = ServerExchange::with_fixed(None, fixed([0x88; 32]));
    let (wire, co, so) = exchange(client, server, |x| x.accept_resume(&s).unwrap());
    println!("resume hello   {}", hex(&wire.hello));
    println!("resume welcome {}", hex(&wire.welcome));
    println!("resume confirm {}", hex(&wire.confirm));
    assert!(matches!(co, Some(ClientOutcome::Resumed(_))));
    assert!(matches!(so, Some(ServerOutcome::Resumed(_))));
    assert_eq!(hex(&wire.hello), hex(&unhex(RESUME_HELLO)));
    assert_eq!(hex(&wire.welcome), hex(&unhex(RESUME_WELCOME)));
    assert_eq!(hex(&wire.confirm), hex(&unhex(RESUME_CONFIRM)));
}

const IK_RESUME_HELLO: &str = "13080706050403020170001cf579aba45a10ba1d1ef06d91fca2aa9ed0a1150515653155405d0b18cb9a6738e3e9a1b4cf847cc7f321ae995a1a33630a4bd35803aa2f787c5af3fa266effe28448dbf4a05fb28fbcab5989a359672aeb01ccfe7eadca54291bb2255563560fe0b46bde2cadcf0cf976df0e6fe4ab";
const IK_RESUME_WELCOME: &str = "410030d3c865a48fceb3d6118577cf2e5f228d6ff69866264757785b253cb7a4806ab5362c7423189691bd4acfdfcd9963eb834ded65a2cf33770826c3ddbcaca11683";
const IK_RESUME_CONFIRM: &str =
    "20008ce80f005ee9528d36641c657b0a3ecbadbafcee8135a76e6aa9d874fc4b578f";

#[test]
fn ikpsk1_resume() {
    let (_, mut c, s, mut cl, _) = new_session(true);
    seal(&mut c, &mut cl, b"hello sealed");
    // As the NNpsk0 resume, with the server's static key pinned.
    let server_key = StaticKey::from_private(SERVER_S);
    let client = ClientExchange::resume_with(
        &c,
        Some(server_key.public()),
        &FixedKeys {
            ephemeral: Some([0x77; 32]),
            client_static: Some(CLIENT_S),
        },
    )
    .unwrap();
    let server = ServerExchange::with_fixed(
        Some(server_key),
        FixedKeys {
            ephemeral: Some([0x88; 32]),
            client_static: None,
        },
    );
    let (wire, co, so) = exchange(client, server, |x| x.accept_resume(&s).unwrap());
    println!("IK resume hello   {}", hex(&wire.hello));
    println!("IK resume welcome {}", hex(&wire.welcome));
    println!("IK resume confirm {}", hex(&wire.confirm));
    assert!(matches!(co, Some(ClientOutcome::Resumed(_))));
    assert!(matches!(so, Some(ServerOutcome::Resumed(_))));
    assert_eq!(hex(&wire.hello), hex(&unhex(IK_RESUME_HELLO)));
    assert_eq!(hex(&wire.welcome), hex(&unhex(IK_RESUME_WELCOME)));
    assert_eq!(hex(&wire.confirm), hex(&unhex(IK_RESUME_CONFIRM)));
}
