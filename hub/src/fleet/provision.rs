//! Device credentials on an external broker (`[fleet] provision`, external broker mode only).
//!
//! - `none` (the default): the operator provisions device logins and ACLs on the broker
//!   (password file + deploy/mosquitto/reactor.acl, an auth plugin, …).
//! - `mosquitto_dynsec`: the hub administers Mosquitto 2's dynamic-security plugin itself,
//!   with an admin login (`provision_username` / `provision_password`, else the
//!   `mqtt_broker` login), by JSON commands on `$CONTROL/dynamic-security/v1` whose answers
//!   come on `$CONTROL/dynamic-security/v1/response` (matched by `correlationData`; the
//!   plugin sends every answer to every admin subscribed there):
//!   - at start, a role `reactor-hub` (subscribe to and receive every device's uplink,
//!     publish every device's downlink) given to the hub's own login, which is created with
//!     the `mqtt_broker` password if the plugin does not know it;
//!   - at enrollment, before the token is spent: a role `reactor-device-{id}` (publish only
//!     its own `status`, `events`, `executions`; subscribe to and receive only its own
//!     `ack`, `bundle`, `cmd`, by literal topic: no wildcard) and a client `{id}` (user name,
//!     and the only client id it may connect with) with the device's new credential as
//!     password and that role. A client or role of that name that the hub did not create is
//!     never touched: the enrollment fails instead. Any failure fails the enrollment (502,
//!     the token stays usable).
//!
//! Device ids cannot hold `+ # / %` or start with `$` (`DeviceId::parse`), so a device's
//! ACL topics are literal and stay under its own prefix.

use std::time::Duration;

use reactor_core::sync::{Channel, DeviceId};
use rumqttc::{AsyncClient, Event, Packet, QoS, SubscribeReasonCode};
use serde_json::{Value, json};

use super::broker::{BrokerTarget, InternalLogin};

/// Topic the plugin takes commands on.
pub const CONTROL_TOPIC: &str = "$CONTROL/dynamic-security/v1";
/// Topic the plugin answers on.
pub const RESPONSE_TOPIC: &str = "$CONTROL/dynamic-security/v1/response";
/// The role the hub's own login gets.
pub const HUB_ROLE: &str = "reactor-hub";
/// What marks broker clients and roles the hub created (`textname`).
const DEVICE_MARK: &str = "reactor device";
/// Longest wait for the broker (connection and every answer).
const TIMEOUT: Duration = Duration::from_secs(10);

/// How device credentials reach the broker.
#[derive(Debug)]
pub enum Provisioner {
    /// The operator provisions them.
    None,
    /// Mosquitto's dynamic-security plugin, administered by the hub.
    Dynsec(Dynsec),
}

/// Provisioning failed: the reason, for the log and the enrollment's problem answer.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ProvisionError(pub String);

/// The dynamic-security administrator.
#[derive(Debug)]
pub struct Dynsec {
    /// The broker, with the admin login.
    admin: BrokerTarget,
    /// The hub's own login (the `mqtt_broker` one).
    hub: Option<InternalLogin>,
    /// One provisioning at a time in this hub (check token, provision, spend token).
    lock: tokio::sync::Mutex<()>,
}

impl Provisioner {
    /// `mosquitto_dynsec` on `broker` (the `mqtt_broker` target) with `admin` (else the
    /// broker's login); sets up the hub's role. `None` for `none`.
    pub async fn start(
        mode: ProvisionMode,
        broker: Option<&BrokerTarget>,
        admin: Option<InternalLogin>,
    ) -> Result<Provisioner, ProvisionError> {
        match mode {
            ProvisionMode::None => Ok(Provisioner::None),
            ProvisionMode::MosquittoDynsec => {
                let Some(broker) = broker else {
                    return Err(ProvisionError(
                        "provision = \"mosquitto_dynsec\" needs mqtt_broker".into(),
                    ));
                };
                let mut target = broker.clone();
                if let Some(admin) = admin {
                    target.login = Some(admin);
                }
                if target.login.is_none() {
                    return Err(ProvisionError(
                        "provision = \"mosquitto_dynsec\" needs an admin login (provision_username / provision_password, or USER:PASSWORD in mqtt_broker)".into(),
                    ));
                }
                let dynsec = Dynsec {
                    admin: target,
                    hub: broker.login.clone(),
                    lock: tokio::sync::Mutex::new(()),
                };
                dynsec.hub_role().await?;
                Ok(Provisioner::Dynsec(dynsec))
            }
        }
    }
}

/// `[fleet] provision`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ProvisionMode {
    #[default]
    None,
    MosquittoDynsec,
}

impl std::str::FromStr for ProvisionMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "none" => Ok(ProvisionMode::None),
            "mosquitto_dynsec" => Ok(ProvisionMode::MosquittoDynsec),
            other => Err(format!(
                "{other:?}: expected \"none\" or \"mosquitto_dynsec\""
            )),
        }
    }
}

/// One ACL entry.
fn acl(acltype: &str, topic: String) -> Value {
    json!({ "acltype": acltype, "topic": topic, "allow": true, "priority": 0 })
}

/// A device's role name.
pub fn device_role(id: &DeviceId) -> String {
    format!("reactor-device-{}", id.as_str())
}

/// The ACLs of device `id`: its own uplink to publish, its own downlink to subscribe to
/// (literally) and receive.
pub fn device_acls(id: &DeviceId) -> Vec<Value> {
    let mut acls = Vec::new();
    for channel in [Channel::Status, Channel::Events, Channel::Executions] {
        acls.push(acl("publishClientSend", id.topic(channel)));
    }
    for channel in [Channel::Ack, Channel::Bundle, Channel::Cmd] {
        acls.push(acl("subscribeLiteral", id.topic(channel)));
        acls.push(acl("publishClientReceive", id.topic(channel)));
    }
    acls
}

/// The hub's ACLs: every device's uplink to subscribe to (the hub's filters, literally) and
/// receive, every device's downlink to publish.
pub fn hub_acls() -> Vec<Value> {
    let mut acls = Vec::new();
    for channel in [Channel::Status, Channel::Events, Channel::Executions] {
        acls.push(acl("subscribeLiteral", channel.hub_filter()));
        acls.push(acl("publishClientReceive", channel.hub_filter()));
    }
    for channel in [Channel::Ack, Channel::Bundle, Channel::Cmd] {
        acls.push(acl("publishClientSend", channel.hub_filter()));
    }
    acls
}

/// One command's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub command: String,
    pub error: Option<String>,
    pub data: Value,
}

impl Answer {
    fn ok_or(&self, tolerated: &[&str]) -> Result<(), ProvisionError> {
        match &self.error {
            None => Ok(()),
            Some(error) if tolerated.contains(&error.as_str()) => Ok(()),
            Some(error) => Err(ProvisionError(format!(
                "the broker refused {}: {error}",
                self.command
            ))),
        }
    }
}

impl Dynsec {
    /// Serialises enrollments through provisioning (hold it from the token check to the
    /// token being spent).
    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.lock.lock().await
    }

    /// Creates (or replaces) device `id`'s broker client with `credential` and its role.
    pub async fn device(&self, id: &DeviceId, credential: &str) -> Result<(), ProvisionError> {
        let name = id.as_str();
        let role = device_role(id);
        if self
            .admin
            .login
            .as_ref()
            .is_some_and(|l| l.username == name)
            || self.hub.as_ref().is_some_and(|l| l.username == name)
        {
            return Err(ProvisionError(format!(
                "device {name:?} has the name of the hub's own broker login; choose another device name"
            )));
        }
        let mut session = Session::open(&self.admin).await?;
        let found = session
            .run(vec![
                json!({"command": "getClient", "username": name}),
                json!({"command": "getRole", "rolename": role}),
            ])
            .await?;
        let client = ours(&found[0], "client", name)?;
        let role_exists = ours(&found[1], "role", &role)?;
        let mut commands = Vec::new();
        if client {
            commands.push(json!({"command": "deleteClient", "username": name}));
        }
        if role_exists {
            commands.push(json!({"command": "deleteRole", "rolename": role}));
        }
        commands.push(json!({
            "command": "createRole", "rolename": role, "textname": DEVICE_MARK,
            "acls": device_acls(id),
        }));
        commands.push(json!({
            "command": "createClient", "username": name, "password": credential,
            "clientid": name, "textname": DEVICE_MARK,
        }));
        commands.push(json!({"command": "addClientRole", "username": name, "rolename": role}));
        let answers = session.run(commands).await?;
        for answer in &answers {
            answer.ok_or(&[])?;
        }
        session.close();
        tracing::info!(
            device = name,
            role,
            "device provisioned on the broker (dynamic security)"
        );
        Ok(())
    }

    /// Removes device `id`'s broker client and role (those the hub created; a client or role
    /// of that name the hub did not create is an error and stays).
    pub async fn remove_device(&self, id: &DeviceId) -> Result<(), ProvisionError> {
        let name = id.as_str();
        let role = device_role(id);
        let mut session = Session::open(&self.admin).await?;
        let found = session
            .run(vec![
                json!({"command": "getClient", "username": name}),
                json!({"command": "getRole", "rolename": role}),
            ])
            .await?;
        let mut commands = Vec::new();
        if ours(&found[0], "client", name)? {
            commands.push(json!({"command": "deleteClient", "username": name}));
        }
        if ours(&found[1], "role", &role)? {
            commands.push(json!({"command": "deleteRole", "rolename": role}));
        }
        if !commands.is_empty() {
            for answer in session.run(commands).await? {
                answer.ok_or(&[])?;
            }
        }
        session.close();
        Ok(())
    }

    /// The hub's role, with every ACL it needs, given to the hub's login (created with the
    /// `mqtt_broker` password when the plugin does not know it).
    async fn hub_role(&self) -> Result<(), ProvisionError> {
        let mut session = Session::open(&self.admin).await?;
        let created = session
            .run(vec![json!({
                "command": "createRole", "rolename": HUB_ROLE,
                "textname": "reactor hub", "acls": hub_acls(),
            })])
            .await?;
        if created[0].error.is_some() {
            created[0].ok_or(&["Role already exists"])?;
            // An existing role: add what is missing.
            let adds = hub_acls()
                .into_iter()
                .map(|mut acl| {
                    acl["command"] = json!("addRoleACL");
                    acl["rolename"] = json!(HUB_ROLE);
                    acl
                })
                .collect();
            for answer in session.run(adds).await? {
                answer.ok_or(&["ACL with this topic already exists"])?;
            }
        }
        let login = self.hub.clone().or_else(|| self.admin.login.clone());
        let Some(login) = login else {
            return Err(ProvisionError("the hub has no broker login".into()));
        };
        let found = session
            .run(vec![
                json!({"command": "getClient", "username": login.username}),
            ])
            .await?;
        match found[0].error.as_deref() {
            Some("Client not found") => {
                let answers = session
                    .run(vec![json!({
                        "command": "createClient", "username": login.username,
                        "password": login.password, "textname": "reactor hub",
                        "roles": [{"rolename": HUB_ROLE}],
                    })])
                    .await?;
                answers[0].ok_or(&[])?;
                tracing::info!(user = %login.username, "created the hub's broker login (dynamic security)");
            }
            Some(_) => found[0].ok_or(&[])?,
            None => {
                let has_role = found[0].data["client"]["roles"]
                    .as_array()
                    .is_some_and(|roles| roles.iter().any(|r| r["rolename"] == HUB_ROLE));
                if !has_role {
                    let answers = session
                        .run(vec![json!({
                            "command": "addClientRole", "username": login.username,
                            "rolename": HUB_ROLE,
                        })])
                        .await?;
                    answers[0].ok_or(&[])?;
                }
            }
        }
        session.close();
        tracing::info!(user = %login.username, role = HUB_ROLE, "the hub's broker login has its role (dynamic security)");
        Ok(())
    }
}

/// Whether a `getClient` / `getRole` answer found an object the hub created; an error when
/// it found one the hub did not create (never touched).
fn ours(answer: &Answer, kind: &str, name: &str) -> Result<bool, ProvisionError> {
    match answer.error.as_deref() {
        Some("Client not found" | "Role not found") => Ok(false),
        Some(_) => answer.ok_or(&[]).map(|()| false),
        None => {
            let mark = answer.data[kind]["textname"].as_str().unwrap_or_default();
            if mark == DEVICE_MARK {
                Ok(true)
            } else {
                Err(ProvisionError(format!(
                    "the broker already has a {kind} {name:?} that the hub did not create; remove it or choose another device name"
                )))
            }
        }
    }
}

/// One admin connection: commands out, answers matched by correlation data.
struct Session {
    client: AsyncClient,
    events: rumqttc::EventLoop,
    /// Prefix of this session's correlation data.
    tag: String,
    sent: usize,
}

impl Session {
    async fn open(admin: &BrokerTarget) -> Result<Session, ProvisionError> {
        let tag = ulid::Ulid::new().to_string();
        let mut options = admin
            .options(&format!("reactor-hub-provision-{tag}"))
            .map_err(|e| ProvisionError(e.to_string()))?;
        options.set_clean_session(true);
        options.set_keep_alive(Duration::from_secs(30));
        let (client, events) = AsyncClient::new(options, 16);
        let mut session = Session {
            client,
            events,
            tag,
            sent: 0,
        };
        session
            .client
            .subscribe(RESPONSE_TOPIC, QoS::AtLeastOnce)
            .await
            .map_err(|e| ProvisionError(e.to_string()))?;
        let subscribed = tokio::time::timeout(TIMEOUT, async {
            loop {
                match session.events.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        return match ack.return_codes.first() {
                            Some(SubscribeReasonCode::Success(_)) => Ok(()),
                            _ => Err(ProvisionError(format!(
                                "the broker refused the admin login a subscription to {RESPONSE_TOPIC} (is the dynamic-security plugin loaded and the login its admin?)"
                            ))),
                        };
                    }
                    Ok(_) => {}
                    Err(error) => {
                        return Err(ProvisionError(format!(
                            "cannot reach the broker {}:{} as its admin: {error}",
                            admin.host, admin.port
                        )));
                    }
                }
            }
        })
        .await;
        match subscribed {
            Ok(Ok(())) => Ok(session),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(ProvisionError(format!(
                "the broker {}:{} did not answer within {TIMEOUT:?}",
                admin.host, admin.port
            ))),
        }
    }

    /// Sends `commands` in one message and returns their answers, in order.
    async fn run(&mut self, mut commands: Vec<Value>) -> Result<Vec<Answer>, ProvisionError> {
        let first = self.sent;
        let ids: Vec<String> = (first..first + commands.len())
            .map(|i| format!("{}-{i}", self.tag))
            .collect();
        self.sent += commands.len();
        for (command, id) in commands.iter_mut().zip(&ids) {
            command["correlationData"] = json!(id);
        }
        let names: Vec<String> = commands
            .iter()
            .map(|c| c["command"].as_str().unwrap_or_default().to_string())
            .collect();
        let payload = json!({ "commands": commands }).to_string();
        self.client
            .publish(CONTROL_TOPIC, QoS::AtLeastOnce, false, payload)
            .await
            .map_err(|e| ProvisionError(e.to_string()))?;
        let mut answers: Vec<Option<Answer>> = vec![None; ids.len()];
        let waited = tokio::time::timeout(TIMEOUT, async {
            while answers.iter().any(Option::is_none) {
                match self.events.poll().await {
                    Ok(Event::Incoming(Packet::Publish(publish)))
                        if publish.topic == RESPONSE_TOPIC =>
                    {
                        let Ok(body) = serde_json::from_slice::<Value>(&publish.payload) else {
                            continue;
                        };
                        for response in body["responses"].as_array().into_iter().flatten() {
                            let Some(id) = response["correlationData"].as_str() else {
                                continue;
                            };
                            if let Some(index) = ids.iter().position(|i| i == id) {
                                answers[index] = Some(Answer {
                                    command: response["command"]
                                        .as_str()
                                        .unwrap_or_default()
                                        .to_string(),
                                    error: response["error"].as_str().map(str::to_string),
                                    data: response["data"].clone(),
                                });
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(error) => {
                        return Err(ProvisionError(format!(
                            "the broker connection failed: {error}"
                        )));
                    }
                }
            }
            Ok(())
        })
        .await;
        match waited {
            Ok(Ok(())) => Ok(answers.into_iter().flatten().collect()),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(ProvisionError(format!(
                "no answer from the dynamic-security plugin to {} within {TIMEOUT:?}",
                names.join(", ")
            ))),
        }
    }

    fn close(self) {
        let _ = self.client.try_disconnect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_acls_stay_under_its_prefix() {
        let id = DeviceId::parse("pump-1").unwrap();
        let acls = device_acls(&id);
        assert_eq!(acls.len(), 9);
        for acl in &acls {
            let topic = acl["topic"].as_str().unwrap();
            assert!(topic.starts_with("reactor/v1/d/pump-1/"), "{topic}");
            assert!(!topic.contains(['+', '#']), "{topic}");
        }
        let publish: Vec<&str> = acls
            .iter()
            .filter(|a| a["acltype"] == "publishClientSend")
            .map(|a| a["topic"].as_str().unwrap())
            .collect();
        assert_eq!(
            publish,
            [
                "reactor/v1/d/pump-1/status",
                "reactor/v1/d/pump-1/events",
                "reactor/v1/d/pump-1/executions"
            ]
        );
        assert!(
            hub_acls()
                .iter()
                .all(|a| a["topic"].as_str().unwrap().starts_with("reactor/v1/d/+/"))
        );
        assert_eq!("none".parse(), Ok(ProvisionMode::None));
        assert!("dynsec".parse::<ProvisionMode>().is_err());
    }
}
