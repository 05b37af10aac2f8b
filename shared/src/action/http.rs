//! The `http` action: calls an HTTP endpoint; JSON in and out

use super::{ActionSpec, Effect, SettingSpec};

pub const SPEC: ActionSpec = ActionSpec {
    kind: "http",
    description: "calls an HTTP endpoint; JSON in and out",
    effect: Effect::SideEffect,
    settings: &[
        SettingSpec {
            name: "method",
            required: false,
            json_type: "string",
            description: "GET (default), POST, PUT, PATCH, DELETE, HEAD",
        },
        SettingSpec {
            name: "url",
            required: true,
            json_type: "string",
            description: "http:// or https:// address",
        },
        SettingSpec {
            name: "headers",
            required: false,
            json_type: "object",
            description: "request headers",
        },
        SettingSpec {
            name: "query",
            required: false,
            json_type: "object",
            description: "query parameters",
        },
        SettingSpec {
            name: "json",
            required: false,
            json_type: "",
            description: "a value sent as a JSON body",
        },
        SettingSpec {
            name: "body",
            required: false,
            json_type: "string",
            description: "a text body",
        },
        SettingSpec {
            name: "timeout",
            required: false,
            json_type: "string",
            description: "a duration (default 30s)",
        },
        SettingSpec {
            name: "expect",
            required: false,
            json_type: "array",
            description: "accepted status codes (default: any 2xx)",
        },
    ],
};

#[derive(Clone, Debug, Default)]
pub struct HttpConfig;
#[derive(Debug)]
pub struct HttpAction;
impl HttpAction {
    pub fn new(_c: HttpConfig) -> Self {
        HttpAction
    }
}
#[async_trait::async_trait]
impl super::Action for HttpAction {
    fn spec(&self) -> &'static ActionSpec {
        &SPEC
    }
    async fn execute(
        &self,
        _i: crate::Value,
        _c: &super::ActionContext,
    ) -> Result<crate::Value, super::ActionError> {
        Err(super::ActionError::permanent("todo"))
    }
}
