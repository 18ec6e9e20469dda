//! `/tasks/<id>/task.json` (docs/images.md): choosing the task and reading it
//! strictly. Unknown fields are ignored so benchmarks may carry their own
//! metadata; every known field is checked for type and sense.

use serde_json::{Map, Value};

/// Defaults (docs/images.md) when task.json leaves a timeout out.
pub const DEFAULT_AGENT_TIMEOUT_SEC: u64 = 600;
pub const DEFAULT_GRADE_TIMEOUT_SEC: u64 = 300;

/// A task.json larger than this is refused rather than read into memory.
pub const MAX_TASK_BYTES: usize = 1 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskSpec {
    pub id: String,
    pub instruction: String,
    /// Absolute, with no `..` component.
    pub workdir: String,
    pub agent_timeout_sec: u64,
    pub grade: GradeSpec,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GradeSpec {
    /// Program and arguments, never empty.
    pub command: Vec<String>,
    pub timeout_sec: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TaskError {
    #[error("the image has no task under /tasks")]
    NoTasks,
    #[error("the image holds several tasks; pick one with --task: {}", .0.join(", "))]
    Ambiguous(Vec<String>),
    #[error("no task {id:?} under /tasks; the tasks are: {}", .available.join(", "))]
    NotFound { id: String, available: Vec<String> },
    #[error("{0:?} is not a task id: ids are made of A-Z a-z 0-9 . _ - and are not . or ..")]
    UnsafeId(String),
    #[error("task.json of {task} is larger than {MAX_TASK_BYTES} bytes")]
    TooLarge { task: String },
    #[error("task.json of {task} is not valid JSON: {message}")]
    Json { task: String, message: String },
    #[error("task.json of {task}: {field} {problem}")]
    Field {
        task: String,
        field: &'static str,
        problem: String,
    },
}

/// Whether `s` can name a task directory: non-empty, only
/// `[A-Za-z0-9._-]`, and not `.` or `..`, so joining it under /tasks stays
/// in /tasks.
pub fn is_safe_id(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Which task to run: the one asked for, or the only one there is.
/// `available` is the sorted list of directories under /tasks.
pub fn choose_task(requested: Option<&str>, available: &[String]) -> Result<String, TaskError> {
    match requested {
        Some(id) if !is_safe_id(id) => Err(TaskError::UnsafeId(id.to_string())),
        Some(id) if available.iter().any(|a| a == id) => Ok(id.to_string()),
        Some(id) => Err(TaskError::NotFound {
            id: id.to_string(),
            available: available.to_vec(),
        }),
        None => match available {
            [] => Err(TaskError::NoTasks),
            [only] => Ok(only.clone()),
            many => Err(TaskError::Ambiguous(many.to_vec())),
        },
    }
}

/// Parse task.json of the directory `dir_name`.
pub fn parse_task(dir_name: &str, bytes: &[u8]) -> Result<TaskSpec, TaskError> {
    let task = dir_name.to_string();
    if bytes.len() > MAX_TASK_BYTES {
        return Err(TaskError::TooLarge { task });
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| TaskError::Json {
        task: task.clone(),
        message: e.to_string(),
    })?;
    let Value::Object(obj) = value else {
        return Err(field_err(&task, "the document", "must be a JSON object"));
    };
    let id = string_field(&task, &obj, "id")?;
    if !is_safe_id(&id) {
        return Err(field_err(
            &task,
            "id",
            format!("{id:?} is not a safe task id"),
        ));
    }
    if id != task {
        return Err(field_err(
            &task,
            "id",
            format!("{id:?} does not match its directory /tasks/{task}"),
        ));
    }
    let workdir = string_field(&task, &obj, "workdir")?;
    check_workdir(&task, &workdir)?;
    Ok(TaskSpec {
        instruction: string_field(&task, &obj, "instruction")?,
        workdir,
        agent_timeout_sec: timeout_field(&task, &obj, "agent_timeout_sec")?
            .unwrap_or(DEFAULT_AGENT_TIMEOUT_SEC),
        grade: parse_grade(&task, &obj)?,
        id,
    })
}

fn parse_grade(task: &str, obj: &Map<String, Value>) -> Result<GradeSpec, TaskError> {
    let Some(Value::Object(grade)) = obj.get("grade") else {
        return Err(field_err(task, "grade", "must be an object"));
    };
    let Some(Value::Array(items)) = grade.get("command") else {
        return Err(field_err(
            task,
            "grade.command",
            "must be an array of strings",
        ));
    };
    let command = items
        .iter()
        .map(|v| v.as_str().map(str::to_string))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| field_err(task, "grade.command", "must hold only strings"))?;
    if command.is_empty() || command[0].is_empty() {
        return Err(field_err(task, "grade.command", "must name a program"));
    }
    if command.iter().any(|c| c.contains('\0')) {
        return Err(field_err(task, "grade.command", "must not contain NUL"));
    }
    let timeout_sec =
        timeout_field(task, grade, "timeout_sec")?.unwrap_or(DEFAULT_GRADE_TIMEOUT_SEC);
    Ok(GradeSpec {
        command,
        timeout_sec,
    })
}

/// The workdir is joined under the root and becomes the agent's cwd, so it
/// must be absolute and must not climb out with `..`.
fn check_workdir(task: &str, workdir: &str) -> Result<(), TaskError> {
    if !workdir.starts_with('/') {
        return Err(field_err(
            task,
            "workdir",
            format!("{workdir:?} is not an absolute path"),
        ));
    }
    if workdir.split('/').any(|c| c == "..") {
        return Err(field_err(
            task,
            "workdir",
            format!("{workdir:?} contains .."),
        ));
    }
    if workdir.contains('\0') {
        return Err(field_err(task, "workdir", "contains NUL"));
    }
    Ok(())
}

fn string_field(
    task: &str,
    obj: &Map<String, Value>,
    field: &'static str,
) -> Result<String, TaskError> {
    match obj.get(field) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(field_err(task, field, "must be a string")),
        None => Err(field_err(task, field, "is missing")),
    }
}

/// A timeout: absent (`None`), or a whole number of seconds above zero.
fn timeout_field(
    task: &str,
    obj: &Map<String, Value>,
    field: &'static str,
) -> Result<Option<u64>, TaskError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n > 0 => Ok(Some(n)),
            _ => Err(field_err(
                task,
                field,
                format!("must be a whole number of seconds above 0, not {v}"),
            )),
        },
    }
}

fn field_err(task: &str, field: &'static str, problem: impl Into<String>) -> TaskError {
    TaskError::Field {
        task: task.to_string(),
        field,
        problem: problem.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{ "id": "toy-add", "instruction": "fix add()",
        "workdir": "/testbed", "agent_timeout_sec": 60,
        "grade": { "command": ["/tests/grade.sh", "toy-add"], "timeout_sec": 30 } }"#;

    fn parse(text: &str) -> Result<TaskSpec, TaskError> {
        parse_task("toy-add", text.as_bytes())
    }

    fn problem_of(text: &str) -> (&'static str, String) {
        match parse(text) {
            Err(TaskError::Field { field, problem, .. }) => (field, problem),
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    fn with(key: &str, value: &str) -> String {
        let mut v: Value = serde_json::from_str(GOOD).unwrap();
        v[key] = serde_json::from_str(value).unwrap();
        v.to_string()
    }

    #[test]
    fn good_task_parses() {
        let t = parse(GOOD).unwrap();
        assert_eq!(t.id, "toy-add");
        assert_eq!(t.instruction, "fix add()");
        assert_eq!(t.workdir, "/testbed");
        assert_eq!(t.agent_timeout_sec, 60);
        assert_eq!(t.grade.command, ["/tests/grade.sh", "toy-add"]);
        assert_eq!(t.grade.timeout_sec, 30);
    }

    #[test]
    fn timeouts_default() {
        let t = parse(
            r#"{"id": "toy-add", "instruction": "", "workdir": "/w",
                           "grade": {"command": ["g"]}}"#,
        )
        .unwrap();
        assert_eq!(t.agent_timeout_sec, DEFAULT_AGENT_TIMEOUT_SEC);
        assert_eq!(t.grade.timeout_sec, DEFAULT_GRADE_TIMEOUT_SEC);
    }

    #[test]
    fn unknown_fields_are_ignored() {
        assert!(parse(&with("difficulty", r#""hard""#)).is_ok());
    }

    #[test]
    fn not_json_is_refused() {
        assert!(matches!(
            parse("{ id: toy-add"),
            Err(TaskError::Json { .. })
        ));
    }

    #[test]
    fn not_an_object_is_refused() {
        assert_eq!(problem_of("[1]").0, "the document");
    }

    #[test]
    fn oversized_file_is_refused() {
        let big = vec![b' '; MAX_TASK_BYTES + 1];
        assert!(matches!(
            parse_task("toy-add", &big),
            Err(TaskError::TooLarge { .. })
        ));
    }

    #[test]
    fn id_must_match_directory() {
        assert_eq!(problem_of(&with("id", r#""other""#)).0, "id");
    }

    #[test]
    fn id_with_parent_component_is_refused() {
        let r = parse_task("..", with("id", r#""..""#).as_bytes());
        assert!(matches!(r, Err(TaskError::Field { field: "id", .. })));
        let r = parse_task("../x", with("id", r#""../x""#).as_bytes());
        assert!(matches!(r, Err(TaskError::Field { field: "id", .. })));
    }

    #[test]
    fn missing_instruction_is_refused() {
        let mut v: Value = serde_json::from_str(GOOD).unwrap();
        v.as_object_mut().unwrap().remove("instruction");
        assert_eq!(
            problem_of(&v.to_string()),
            ("instruction", "is missing".into())
        );
    }

    #[test]
    fn instruction_must_be_a_string() {
        assert_eq!(problem_of(&with("instruction", "42")).0, "instruction");
    }

    #[test]
    fn relative_workdir_is_refused() {
        assert_eq!(problem_of(&with("workdir", r#""testbed""#)).0, "workdir");
    }

    #[test]
    fn workdir_climbing_out_is_refused() {
        assert_eq!(
            problem_of(&with("workdir", r#""/testbed/../../etc""#)).0,
            "workdir"
        );
    }

    #[test]
    fn zero_agent_timeout_is_refused() {
        assert_eq!(
            problem_of(&with("agent_timeout_sec", "0")).0,
            "agent_timeout_sec"
        );
    }

    #[test]
    fn negative_or_fractional_timeout_is_refused() {
        assert_eq!(
            problem_of(&with("agent_timeout_sec", "-5")).0,
            "agent_timeout_sec"
        );
        assert_eq!(
            problem_of(&with("agent_timeout_sec", "1.5")).0,
            "agent_timeout_sec"
        );
        assert_eq!(
            problem_of(&with("agent_timeout_sec", r#""600""#)).0,
            "agent_timeout_sec"
        );
    }

    #[test]
    fn grade_must_be_an_object() {
        assert_eq!(
            problem_of(&with("grade", r#""/tests/grade.sh""#)).0,
            "grade"
        );
    }

    #[test]
    fn empty_grade_command_is_refused() {
        assert_eq!(
            problem_of(&with("grade", r#"{"command": []}"#)).0,
            "grade.command"
        );
        assert_eq!(
            problem_of(&with("grade", r#"{"command": [""]}"#)).0,
            "grade.command"
        );
    }

    #[test]
    fn grade_command_as_string_is_refused() {
        assert_eq!(
            problem_of(&with("grade", r#"{"command": "/tests/grade.sh"}"#)).0,
            "grade.command"
        );
    }

    #[test]
    fn grade_command_with_non_strings_is_refused() {
        assert_eq!(
            problem_of(&with("grade", r#"{"command": ["/g", 1]}"#)).0,
            "grade.command"
        );
    }

    #[test]
    fn zero_grade_timeout_is_refused() {
        assert_eq!(
            problem_of(&with("grade", r#"{"command": ["/g"], "timeout_sec": 0}"#)).0,
            "timeout_sec"
        );
    }

    #[test]
    fn safe_ids() {
        assert!(is_safe_id("toy-add"));
        assert!(is_safe_id("django__django-11099"));
        assert!(is_safe_id("v1.2"));
        assert!(is_safe_id("..."));
    }

    #[test]
    fn unsafe_ids() {
        for id in ["", ".", "..", "../x", "a/b", "/abs", "a b", "tâche", "a\0b"] {
            assert!(!is_safe_id(id), "{id:?}");
        }
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn choose_the_only_task() {
        assert_eq!(choose_task(None, &names(&["a"])).unwrap(), "a");
    }

    #[test]
    fn choose_without_tasks_fails() {
        assert_eq!(choose_task(None, &[]), Err(TaskError::NoTasks));
    }

    #[test]
    fn choose_among_many_needs_an_id_and_lists_them() {
        let e = choose_task(None, &names(&["a", "b"])).unwrap_err();
        assert_eq!(e, TaskError::Ambiguous(names(&["a", "b"])));
        assert!(e.to_string().contains("a, b"));
    }

    #[test]
    fn choose_the_requested_task() {
        assert_eq!(choose_task(Some("b"), &names(&["a", "b"])).unwrap(), "b");
    }

    #[test]
    fn choose_a_missing_task_lists_the_others() {
        let e = choose_task(Some("c"), &names(&["a", "b"])).unwrap_err();
        assert!(matches!(e, TaskError::NotFound { .. }));
        assert!(e.to_string().contains("a, b"));
    }

    #[test]
    fn choose_refuses_a_traversing_id() {
        assert_eq!(
            choose_task(Some("../x"), &names(&["a"])),
            Err(TaskError::UnsafeId("../x".into()))
        );
    }
}
