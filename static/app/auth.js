// Log in, sign up, forgot password, reset password.

import { sh } from "./client.js";
import { busy, errorText, field, h, showFieldErrors } from "./dom.js";
import { go } from "./router.js";

function authCard(title, form, links) {
  return h("section", { class: "auth card" }, h("h1", {}, title), form, h("div", { class: "links" }, links));
}

function input(type, testid, attrs = {}) {
  return h("input", { type, testid, required: true, ...attrs });
}

// The words under a failed form: the fields marked, or the server's message.
function fieldsOrServer(err, hasFields) {
  return hasFields ? "Please fix the fields marked above." : errorText(err);
}

// One auth form: `<name>-form` with its fields, an error line (`<name>-error`), an optional
// `done` line and the submit button (`<name>-submit`). `run()` makes the call; a failure
// marks the fields the server named and shows `explain(err, hasFields)`.
function authForm(name, { intro, fields, done, submitLabel }, run, explain = fieldsOrServer) {
  const error = h("p", { class: "error", testid: `${name}-error`, role: "alert" });
  const submit = h("button", { type: "submit", class: "primary", testid: `${name}-submit` }, submitLabel);
  const form = h("form", { testid: `${name}-form` }, intro, ...fields, error, done, h("div", { class: "actions" }, submit));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    error.textContent = "";
    busy(submit, async () => {
      try {
        await run(submit);
      } catch (err) {
        error.textContent = explain(err, showFieldErrors(form, err));
      }
    });
  });
  return form;
}

export function loginScreen(view) {
  const identifier = input("text", "login-identifier", { autocomplete: "username", autocapitalize: "none" });
  const password = input("password", "login-password", { autocomplete: "current-password" });
  const form = authForm(
    "login",
    { fields: [field("Email or username", identifier, "identifier"), field("Password", password, "password")], submitLabel: "Log in" },
    async () => {
      await sh.auth.login(identifier.value.trim(), password.value);
      go("/feed");
    },
    (err) => {
      password.select();
      return err.status === 401 ? "Wrong email/username or password." : errorText(err);
    },
  );
  view.append(
    authCard("Log in to socialhub", form, [
      h("a", { href: "#/signup", testid: "link-signup" }, "Create an account"),
      h("a", { href: "#/forgot", testid: "link-forgot" }, "Forgot password?"),
    ]),
  );
  identifier.focus();
}

export function signupScreen(view) {
  const name = input("text", "signup-name", { autocomplete: "name", maxlength: 100 });
  const email = input("email", "signup-email", { autocomplete: "email" });
  const username = input("text", "signup-username", {
    autocomplete: "username", autocapitalize: "none", pattern: "[A-Za-z0-9_]{3,30}",
    title: "3 to 30 letters, digits or _",
  });
  const password = input("password", "signup-password", { autocomplete: "new-password", minlength: 8, maxlength: 128 });
  const form = authForm(
    "signup",
    {
      fields: [
        field("Name", name, "name"),
        field("Email", email, "email"),
        field("Username", username, "username"),
        field("Password (at least 8 characters)", password, "password"),
      ],
      submitLabel: "Sign up",
    },
    async () => {
      await sh.auth.signup({
        name: name.value.trim(), email: email.value.trim(), username: username.value.trim(), password: password.value,
      });
      go("/feed");
    },
    (err, hasFields) => (err.status === 409 ? err.message || "That email or username is taken." : fieldsOrServer(err, hasFields)),
  );
  view.append(
    authCard("Create your account", form, [
      h("a", { href: "#/login", testid: "link-login" }, "I have an account"),
    ]),
  );
  name.focus();
}

export function forgotScreen(view) {
  const email = input("email", "forgot-email", { autocomplete: "email" });
  const done = h(
    "p",
    { class: "ok", testid: "forgot-done", hidden: true, role: "status" },
    "If that address has an account, a 6-digit code is on its way. ",
    h("a", { href: "#/reset" }, "Enter the code"),
  );
  const form = authForm(
    "forgot",
    {
      intro: h("p", { class: "muted" }, "We will email you a 6-digit code to set a new password."),
      fields: [field("Email", email, "email")],
      done,
      submitLabel: "Send code",
    },
    async () => {
      await sh.auth.forgotPassword(email.value.trim());
      sessionStorage.setItem("socialhub.reset_email", email.value.trim());
      done.hidden = false;
    },
    (err) => errorText(err),
  );
  view.append(
    authCard("Forgot your password?", form, [
      h("a", { href: "#/login", testid: "link-login" }, "Back to log in"),
      h("a", { href: "#/reset", testid: "link-reset" }, "I have a code"),
    ]),
  );
  email.focus();
}

export function resetScreen(view) {
  const email = input("email", "reset-email", { autocomplete: "email", value: sessionStorage.getItem("socialhub.reset_email") || "" });
  const otp = input("text", "reset-otp", { inputmode: "numeric", autocomplete: "one-time-code", pattern: "[0-9]{6}", maxlength: 6 });
  const password = input("password", "reset-password", { autocomplete: "new-password", minlength: 8, maxlength: 128 });
  const done = h(
    "p",
    { class: "ok", testid: "reset-done", hidden: true, role: "status" },
    "Your password is changed. ",
    h("a", { href: "#/login" }, "Log in"),
  );
  const form = authForm(
    "reset",
    {
      fields: [field("Email", email, "email"), field("6-digit code", otp, "otp"), field("New password", password, "new_password")],
      done,
      submitLabel: "Set new password",
    },
    async (submit) => {
      await sh.auth.resetPassword({ email: email.value.trim(), otp: otp.value.trim(), new_password: password.value });
      sessionStorage.removeItem("socialhub.reset_email");
      done.hidden = false;
      submit.hidden = true;
    },
    (err, hasFields) => (err.status === 400 ? "That code is wrong or expired. Ask for a new one." : fieldsOrServer(err, hasFields)),
  );
  view.append(
    authCard("Set a new password", form, [
      h("a", { href: "#/forgot", testid: "link-forgot" }, "Send a new code"),
      h("a", { href: "#/login", testid: "link-login" }, "Back to log in"),
    ]),
  );
  (email.value ? otp : email).focus();
}
