// The sign-in page: language, and why the last sign-in failed (from the gateway's redirect).
import { i18n } from './i18n.js';

const lang = document.getElementById('lang');
lang.value = i18n.lang;
lang.addEventListener('change', () => { i18n.set(lang.value); i18n.apply(document); });
i18n.apply(document);
const q = new URLSearchParams(location.search);
const msg = document.getElementById('signin-msg');
if (q.get('error')) msg.textContent = i18n.t('signin.error.' + q.get('error'));
else if (q.get('signedout')) msg.textContent = i18n.t('signin.signedout');
document.getElementById('token').focus();
fetch('providers').then((r) => r.json()).then((p) => { document.getElementById('oidc').hidden = !p.oidc; }).catch(() => {});
