// Security keys (WebAuthn) on the second-factor pages: a form marked data-webauthn asks the
// server for options, lets the browser talk to the key, and posts the key's answer with the form.
"use strict";

(() => {
  const fromB64url = (text) => {
    const base64 = text.replace(/-/g, "+").replace(/_/g, "/");
    const padded = base64 + "===".slice((base64.length + 3) % 4);
    return Uint8Array.from(atob(padded), (c) => c.charCodeAt(0)).buffer;
  };
  const toB64url = (buffer) => {
    let binary = "";
    for (const byte of new Uint8Array(buffer)) binary += String.fromCharCode(byte);
    return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  };
  const withIds = (list) => (list || []).map((c) => ({ ...c, id: fromB64url(c.id) }));

  // What both ceremonies send back about the credential, besides its response.
  const described = (credential, response) => ({
    id: credential.id,
    rawId: toB64url(credential.rawId),
    type: credential.type,
    authenticatorAttachment: credential.authenticatorAttachment,
    clientExtensionResults: credential.getClientExtensionResults(),
    response,
  });

  const create = async (options) => {
    options.challenge = fromB64url(options.challenge);
    options.user.id = fromB64url(options.user.id);
    options.excludeCredentials = withIds(options.excludeCredentials);
    const credential = await navigator.credentials.create({ publicKey: options });
    const response = credential.response;
    return described(credential, {
      clientDataJSON: toB64url(response.clientDataJSON),
      attestationObject: toB64url(response.attestationObject),
      transports: response.getTransports ? response.getTransports() : [],
    });
  };

  const get = async (options) => {
    options.challenge = fromB64url(options.challenge);
    options.allowCredentials = withIds(options.allowCredentials);
    const credential = await navigator.credentials.get({ publicKey: options });
    const response = credential.response;
    return described(credential, {
      clientDataJSON: toB64url(response.clientDataJSON),
      authenticatorData: toB64url(response.authenticatorData),
      signature: toB64url(response.signature),
      userHandle: response.userHandle ? toB64url(response.userHandle) : null,
    });
  };

  const ceremony = async (form) => {
    const answer = await fetch(form.dataset.optionsUrl, {
      method: "POST",
      credentials: "same-origin",
      headers: {
        "content-type": "application/json",
        "x-csrftoken": form.elements._csrf_token.value,
      },
      body: "{}",
    });
    const options = await answer.json();
    if (!answer.ok) throw new Error(options.detail || answer.statusText);
    return form.dataset.webauthn === "register" ? create(options) : get(options);
  };

  for (const form of document.querySelectorAll("form[data-webauthn]")) {
    const problem = form.querySelector("[data-webauthn-error]");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      problem.hidden = true;
      const button = form.querySelector("button[type=submit]");
      button.disabled = true;
      try {
        if (!window.PublicKeyCredential) throw new Error("WebAuthn is not available here.");
        form.elements.credential.value = JSON.stringify(await ceremony(form));
        // A programmatic submit fires no submit event: this posts the answer for real.
        form.submit();
      } catch (error) {
        problem.textContent = `${form.dataset.errorText} ${error.message}`;
        problem.hidden = false;
        button.disabled = false;
      }
    });
  }
})();
