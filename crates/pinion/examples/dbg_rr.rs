use pinion::{blocking::Socket, Protocol};
use std::time::Duration;
fn main() {
    let rep = Socket::new(Protocol::Rep0).unwrap();
    let url = rep.listen("tcp://127.0.0.1:0").unwrap().url().to_string();
    let rep2 = rep.clone();
    std::thread::spawn(move || loop {
        let q = match rep2.recv() {
            Ok(q) => q,
            Err(e) => {
                eprintln!("rep recv: {e}");
                return;
            }
        };
        if let Err(e) = rep2.send(q) {
            eprintln!("rep send: {e}");
            return;
        }
    });
    let req = Socket::new(Protocol::Req0).unwrap();
    req.dial(&url).unwrap();
    for i in 0..20000u32 {
        req.send(i.to_be_bytes().to_vec()).unwrap();
        match req.recv_timeout(Some(Duration::from_secs(2))) {
            Ok(b) => assert_eq!(b[..], i.to_be_bytes()),
            Err(e) => {
                eprintln!(
                    "iter {i}: {e}\nreq {:?}\nrep {:?}",
                    req.stats(),
                    rep.stats()
                );
                std::process::exit(1);
            }
        }
    }
    println!("ok");
}
